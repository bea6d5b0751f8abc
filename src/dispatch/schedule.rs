//! When a failed call is tried again: `dispatch.retry_schedule_seconds` with
//! `dispatch.jitter`, lengthened (never shortened) by a `Retry-After`.

use sha2::{Digest, Sha256};

use crate::config::DispatchSettings;
use crate::store::RetryPolicy;

/// `dispatch.retry_schedule_seconds` with `dispatch.jitter`.
pub struct Schedule {
    seconds: Vec<f64>,
    jitter: f64,
}

impl From<&DispatchSettings> for Schedule {
    fn from(d: &DispatchSettings) -> Self {
        Self {
            seconds: d.retry_schedule_seconds.clone(),
            jitter: d.jitter,
        }
    }
}

impl RetryPolicy for Schedule {
    /// The schedule's step for this failure, scaled by a factor in `[1 - jitter, 1 + jitter]`.
    /// A longer `Retry-After` replaces it, spread the same width but only upwards (scaled by
    /// `[1, 1 + 2 * jitter]`), so a target that asked for a pause never hears from flowhook
    /// early, and the actions it turned away together do not come back in lockstep.
    fn delay(
        &self,
        action_id: &str,
        failures: u32,
        at_least: Option<chrono::Duration>,
    ) -> Option<chrono::Duration> {
        let step = *self.seconds.get(failures.checked_sub(1)? as usize)?;
        // The same spread every time for one action and attempt (so a test can predict it).
        let digest = Sha256::new()
            .chain_update(action_id.as_bytes())
            .chain_update(failures.to_be_bytes())
            .finalize();
        let unit =
            u64::from_be_bytes(digest[..8].try_into().expect("8 bytes")) as f64 / u64::MAX as f64;
        let scheduled = step * (1.0 + self.jitter * (unit * 2.0 - 1.0));
        let asked = at_least.map_or(0.0, |d| d.num_milliseconds().max(0) as f64 / 1000.0);
        let seconds = if asked > scheduled {
            asked * (1.0 + 2.0 * self.jitter * unit)
        } else {
            scheduled
        };
        Some(chrono::Duration::milliseconds(
            (seconds * 1000.0).round() as i64
        ))
    }
}

#[cfg(test)]
pub(super) mod tests {
    use chrono::Duration as Span;

    use super::*;

    pub(crate) fn schedule(jitter: f64) -> Schedule {
        Schedule {
            seconds: vec![5.0, 30.0],
            jitter,
        }
    }

    fn ms(d: Option<Span>) -> i64 {
        d.expect("a next attempt").num_milliseconds()
    }

    #[test]
    fn the_schedule_spreads_each_step_both_ways() {
        let s = schedule(0.2);
        let delays: Vec<i64> = (0..500)
            .map(|i| ms(s.delay(&format!("act_{i}"), 1, None)))
            .collect();
        assert!(delays.iter().all(|d| (4_000..=6_000).contains(d)));
        assert!(delays.iter().any(|d| *d < 4_500) && delays.iter().any(|d| *d > 5_500));
        assert_eq!(s.delay("act_1", 3, None), None, "the schedule ran out");
    }

    #[test]
    fn retry_after_never_shortens_the_schedule() {
        let s = schedule(0.2);
        for i in 0..200 {
            let id = format!("act_{i}");
            let plain = s.delay(&id, 2, None);
            assert_eq!(s.delay(&id, 2, Some(Span::zero())), plain);
            assert_eq!(s.delay(&id, 2, Some(Span::seconds(10))), plain);
        }
    }

    #[test]
    fn a_longer_retry_after_is_kept_and_spread_upwards() {
        let s = schedule(0.2);
        let delays: Vec<i64> = (0..2_000)
            .map(|i| ms(s.delay(&format!("act_{i}"), 1, Some(Span::seconds(15)))))
            .collect();
        assert!(delays.iter().all(|d| (15_000..=21_000).contains(d)));
        let distinct: std::collections::HashSet<_> = delays.iter().map(|d| d / 100).collect();
        assert!(
            distinct.len() > 40,
            "not in lockstep: {} slots",
            distinct.len()
        );
        // Without jitter, exactly what was asked.
        let exact = schedule(0.0).delay("act_1", 1, Some(Span::seconds(15)));
        assert_eq!(ms(exact), 15_000);
    }
}
