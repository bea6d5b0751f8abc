-- Which instance holds an action's lease (`store.postgres.instance_id`): an instance that
-- restarts after a crash takes back the calls it held at once, instead of waiting for their
-- leases to run out; a peer's leases still wait.
ALTER TABLE actions ADD COLUMN leased_by text COLLATE "C";
