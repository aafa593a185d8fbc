//! The egress limit: one token bucket shared by every upload of a server.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// Paces uploads to `bytes_per_sec` in total.
///
/// Each caller reserves its bytes on one shared timeline (`next_free`: when everything reserved so far
/// has drained at the limit) and sleeps until its reservation starts. Idle time is not saved up, so the
/// largest burst is one block: callers keep blocks at about a tenth of a second of traffic (see
/// [`EgressLimiter::block_size`]).
#[derive(Debug)]
pub(crate) struct EgressLimiter {
    bytes_per_sec: u64,
    next_free: Mutex<Instant>,
}

impl EgressLimiter {
    pub(crate) fn new(bytes_per_sec: u64) -> Self {
        EgressLimiter {
            bytes_per_sec: bytes_per_sec.max(1),
            next_free: Mutex::new(Instant::now()),
        }
    }

    /// A block size that keeps bursts near 100 ms of traffic: no smaller than 16 KiB (syscall cost),
    /// no larger than `max`.
    pub(crate) fn block_size(&self, max: usize) -> usize {
        let tenth = usize::try_from(self.bytes_per_sec / 10).unwrap_or(usize::MAX);
        tenth.max(16 * 1024).min(max)
    }

    /// Waits until `bytes` may be sent.
    pub(crate) async fn acquire(&self, bytes: u64) {
        let start = self.reserve(bytes);
        tokio::time::sleep_until(start).await;
    }

    fn reserve(&self, bytes: u64) -> Instant {
        let drain = Duration::from_secs_f64(bytes as f64 / self.bytes_per_sec as f64);
        let mut next_free = self.next_free.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let start = (*next_free).max(Instant::now());
        *next_free = start + drain;
        start
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_are_spaced_by_their_drain_time() {
        let limiter = EgressLimiter::new(1000);
        let first = limiter.reserve(500);
        let second = limiter.reserve(250);
        let third = limiter.reserve(1);
        assert_eq!(second - first, Duration::from_millis(500));
        assert_eq!(third - second, Duration::from_millis(250));
    }

    #[test]
    fn block_size_tracks_the_rate() {
        let max = 1 << 20;
        assert_eq!(EgressLimiter::new(1).block_size(max), 16 * 1024);
        assert_eq!(EgressLimiter::new(1 << 20).block_size(max), (1 << 20) / 10);
        assert_eq!(EgressLimiter::new(u64::MAX).block_size(max), max);
    }
}
