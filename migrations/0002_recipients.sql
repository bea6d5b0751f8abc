-- Recipients' marketing preferences (contract section 8.2): one row per recipient key (its
-- E.164 form, or the id as sent), the body the embedded store keeps too (JSON: the recipient
-- and its distinct stop and resume choices). Kept whatever message retention purges: an
-- opt-out outlives the messages it answered.
CREATE TABLE recipients (
    key   text COLLATE "C" PRIMARY KEY,
    body  bytea NOT NULL
);
