//! Bringing an embedded store back after its storage failed (a full disk, an I/O error): sled
//! 0.34 refuses every write after its first I/O error until the store is opened again, and a
//! fjall handle takes none after a failed write, so once the disk has room again the healer
//! opens it again in place ([`Store::reopen`]), without a restart.

use std::time::Duration;

use super::{free_disk_bytes, Store};
use crate::background::{self, Background};
use crate::config::StoreSettings;

/// How often the healer looks.
const INTERVAL: Duration = Duration::from_secs(2);
/// Free space needed before trying: `store.min_free_disk_bytes`, and at least this.
const MIN_ROOM: u64 = 1 << 20;

pub struct Healer {
    worker: Background,
}

impl Healer {
    pub fn start(store: Store, settings: &StoreSettings) -> std::io::Result<Self> {
        let path = settings.path.clone();
        let room = settings.min_free_disk_bytes.max(MIN_ROOM);
        let worker = Background::spawn(
            "flowhook-healer",
            || {},
            move |token| {
                let mut said = String::new();
                while !background::sleep(&token, INTERVAL) {
                    // Cheap signs only: no probe write every two seconds.
                    if !store.storage_failing() {
                        continue;
                    }
                    if !free_disk_bytes(&path).is_ok_and(|free| free >= room) {
                        continue;
                    }
                    if let Err(error) = store.reopen() {
                        // Once per different reason, not every two seconds.
                        let why = error.to_string();
                        if why != said {
                            tracing::warn!(%error, "the store could not be opened again yet; retrying");
                            said = why;
                        }
                    }
                }
            },
        )?;
        Ok(Self { worker })
    }

    pub fn stop(&self) {
        self.worker.stop();
    }
}
