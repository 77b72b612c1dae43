//! The MQTT contract tested on the machine alone: a fake clock, a simulated broker connection
//! and simulated programs, no sockets and no broker.

use super::*;

#[test]
fn backoff_grows_and_is_capped() {
    let mut rng = fastrand::Rng::with_seed(7);
    for _ in 0..100 {
        assert!(backoff(0, REFUSED_CAP, &mut rng) <= Duration::from_millis(300));
        assert!(backoff(3, REFUSED_CAP, &mut rng) >= Duration::from_millis(1600));
        for a in [20, 100, u32::MAX] {
            assert!(backoff(a, REFUSED_CAP, &mut rng) <= Duration::from_secs(36));
            // An unreachable broker is retried at least every 1.2 s (cap plus jitter).
            assert!(backoff(a, UNREACHABLE_CAP, &mut rng) <= Duration::from_millis(1200));
        }
    }
}
