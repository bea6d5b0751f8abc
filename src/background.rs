//! One way to run and stop background work (the store's writer and flusher, the dispatcher
//! and the retention janitor): a named thread, a [`CancellationToken`] it watches, and its join
//! handle. [`Background::stop`] cancels the token, wakes the thread if a blocking wait holds
//! it, and joins it; dropping the handle does the same.

use std::sync::Mutex;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub use tokio_util::sync::CancellationToken;

pub struct Background {
    name: &'static str,
    token: CancellationToken,
    wake: Box<dyn Fn() + Send + Sync>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Background {
    /// Runs `body` on a thread named `name`. `wake` interrupts whatever blocking wait the body
    /// uses besides the token (a condition variable, a channel); a body that waits with
    /// [`sleep`] or on the token itself needs none, since [`Background::stop`] also unparks
    /// the thread.
    pub fn spawn(
        name: &'static str,
        wake: impl Fn() + Send + Sync + 'static,
        body: impl FnOnce(CancellationToken) + Send + 'static,
    ) -> std::io::Result<Self> {
        let token = CancellationToken::new();
        let watched = token.clone();
        let thread = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || body(watched))?;
        Ok(Self {
            name,
            token,
            wake: Box::new(wake),
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Asks the thread to stop and waits until it has.
    pub fn stop(&self) {
        self.token.cancel();
        (self.wake)();
        let thread = self.thread.lock().expect("background lock").take();
        if let Some(thread) = thread {
            thread.thread().unpark();
            if thread.join().is_err() {
                tracing::error!(thread = self.name, "a background thread panicked");
            }
        }
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Waits `duration` on the calling thread, or less if `token` is cancelled meanwhile (by
/// [`Background::stop`], which unparks the thread). True when it was cancelled.
pub fn sleep(token: &CancellationToken, duration: Duration) -> bool {
    let until = Instant::now() + duration;
    loop {
        if token.is_cancelled() {
            return true;
        }
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        std::thread::park_timeout(left);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use super::*;

    #[test]
    fn stop_interrupts_a_sleeping_thread_and_joins_it() {
        let rounds = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&rounds);
        let worker = Background::spawn(
            "test-sleeper",
            || {},
            move |token| {
                while !sleep(&token, Duration::from_secs(3600)) {
                    counted.fetch_add(1, Ordering::SeqCst);
                }
            },
        )
        .unwrap();
        let started = Instant::now();
        worker.stop();
        assert!(started.elapsed() < Duration::from_secs(5));
        assert_eq!(rounds.load(Ordering::SeqCst), 0);
        worker.stop(); // twice is fine
    }

    #[test]
    fn sleep_returns_false_when_the_time_is_up() {
        assert!(!sleep(&CancellationToken::new(), Duration::from_millis(5)));
    }
}
