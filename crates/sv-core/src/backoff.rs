//! Restart backoff: capped exponential with jitter and a reset after a stable run.
//!
//! supervisord waits 1, 2, 3 … seconds between attempts; Docker, pm2 and systemd users keep asking
//! for capped exponential backoff with jitter (moby #41856, pm2 #3928). The delay for attempt `n`
//! (0-based) is `min(max, initial × multiplierⁿ)`, then shortened by up to `jitter` of itself, so
//! a fleet of containers restarted together spreads out while no delay ever exceeds the cap.
//! Randomness is an argument (`sample` in `[0, 1)`) so the function stays pure and testable.

use std::time::Duration;

use crate::config::BackoffConfig;

/// The delay before restart attempt `attempt` (0 = first restart).
pub fn delay(cfg: &BackoffConfig, attempt: u32, sample: f64) -> Duration {
    let base = cfg.initial.as_secs_f64() * cfg.multiplier.max(1.0).powi(attempt.min(1024) as i32);
    let capped = base.min(cfg.max.as_secs_f64()).max(0.0);
    let jitter = cfg.jitter.clamp(0.0, 1.0) * sample.clamp(0.0, 1.0);
    Duration::from_secs_f64(capped * (1.0 - jitter))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn cfg() -> BackoffConfig {
        BackoffConfig::default()
    }

    #[test]
    fn grows_exponentially_without_jitter() {
        let c = cfg();
        assert_eq!(delay(&c, 0, 0.0), Duration::from_millis(100));
        assert_eq!(delay(&c, 1, 0.0), Duration::from_millis(200));
        assert_eq!(delay(&c, 3, 0.0), Duration::from_millis(800));
    }

    #[test]
    fn caps_at_max() {
        let c = cfg();
        assert_eq!(delay(&c, 30, 0.0), c.max);
        assert_eq!(delay(&c, u32::MAX, 0.0), c.max);
    }

    proptest! {
        #[test]
        fn never_exceeds_cap_and_never_below_jitter_floor(attempt in 0u32..10_000, sample in 0.0f64..1.0,
            initial_ms in 1u64..10_000, max_ms in 1u64..100_000, mult in 1.0f64..10.0, jitter in 0.0f64..1.0) {
            let c = BackoffConfig {
                initial: Duration::from_millis(initial_ms),
                max: Duration::from_millis(max_ms),
                multiplier: mult,
                jitter,
                reset_after: Duration::from_secs(60),
            };
            let d = delay(&c, attempt, sample);
            let undelayed = delay(&BackoffConfig { jitter: 0.0, ..c }, attempt, 0.0);
            prop_assert!(d <= c.max);
            prop_assert!(d <= undelayed);
            prop_assert!(d.as_secs_f64() >= undelayed.as_secs_f64() * (1.0 - jitter) - 1e-9);
        }

        #[test]
        fn monotonic_in_attempt_without_jitter(attempt in 0u32..200) {
            let c = BackoffConfig { jitter: 0.0, ..cfg() };
            prop_assert!(delay(&c, attempt, 0.0) <= delay(&c, attempt + 1, 0.0));
        }
    }
}
