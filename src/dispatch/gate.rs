//! Each target's limits as the loop applies them: `max_in_flight` slots, and starts spaced
//! by `rate_per_second` (no bursts).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::targets::Limits;

/// A target's limits, as the loop applies them.
pub(super) struct Gate {
    pub(super) slots: Arc<Semaphore>,
    interval: Option<Duration>,
    next_start: Instant,
}

pub(super) enum Blocked {
    /// Every `max_in_flight` slot is taken; wait for a call to finish.
    Busy,
    /// The rate allows the next start at this instant.
    Until(Instant),
}

impl Gate {
    pub(super) fn new(limits: Limits) -> Self {
        Self {
            slots: Arc::new(Semaphore::new(limits.max_in_flight.max(1))),
            interval: (limits.rate_per_second > 0.0)
                .then(|| Duration::from_secs_f64(1.0 / limits.rate_per_second)),
            next_start: Instant::now(),
        }
    }

    pub(super) fn try_start(&mut self, now: Instant) -> Result<OwnedSemaphorePermit, Blocked> {
        if self.interval.is_some() && now < self.next_start {
            return Err(Blocked::Until(self.next_start));
        }
        let permit = Arc::clone(&self.slots)
            .try_acquire_owned()
            .map_err(|_| Blocked::Busy)?;
        if let Some(interval) = self.interval {
            // No burst: starts are at least `interval` apart.
            self.next_start = self.next_start.max(now) + interval;
        }
        Ok(permit)
    }
}
