//! Reconnect policy: exponential backoff with full jitter, and the attempt counter that resets
//! only once a connection has proved itself. Pure code: randomness comes in as an argument.

use std::time::Duration;

use crate::config::Config;

/// What to do after a connection attempt failed or a connection was lost.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Wait `delay`, then make attempt number `attempt` (1-based since the last proof).
    Retry { attempt: u32, delay: Duration },
    /// `max_attempts` reconnect attempts in a row failed: stop.
    GiveUp { attempts: u32 },
}

/// The reconnect state of one client.
#[derive(Clone, Debug)]
pub struct Reconnect {
    base: Duration,
    cap: Duration,
    min: Duration,
    jitter: bool,
    /// Ceiling on a server's `Retry-After`; its own, not `cap`.
    retry_after_max: Duration,
    max_attempts: u32,
    /// Failures since the last proven connection.
    failures: u32,
}

impl Reconnect {
    pub fn new(cfg: &Config) -> Self {
        Reconnect {
            base: cfg.backoff_base,
            cap: cfg.backoff_cap,
            jitter: cfg.backoff_jitter,
            // The floor holds even for a config built in Rust that skipped validate().
            min: cfg.backoff_min.max(crate::config::limits::MIN_BACKOFF),
            retry_after_max: cfg.retry_after_max,
            max_attempts: cfg.max_attempts,
            failures: 0,
        }
    }

    /// The ceiling of the delay before attempt `n` (0-based): `min(cap, base × 2^n)`.
    pub fn ceiling(&self, n: u32) -> Duration {
        let factor = 1u32.checked_shl(n.min(31)).unwrap_or(u32::MAX);
        self.base
            .checked_mul(factor)
            .unwrap_or(self.cap)
            .min(self.cap)
    }

    /// The delay before attempt `n` (0-based) for a uniform draw `unit` in `[0, 1)`:
    /// uniform in `[0, ceiling]` with jitter, the ceiling without; never below the floor.
    pub fn delay(&self, n: u32, unit: f64) -> Duration {
        let ceiling = self.ceiling(n);
        let d = if self.jitter {
            ceiling.mul_f64(unit.clamp(0.0, 1.0))
        } else {
            ceiling
        };
        d.max(self.min)
    }

    /// A connection failed or was lost before proving itself (or after: the count was reset by
    /// [`on_proof`](Self::on_proof) first). `server_hint` is a server's `Retry-After`, honoured
    /// in full up to `retry_after_max` (not `backoff_cap`): the delay is the longer of the two.
    pub fn on_failure(&mut self, unit: f64, server_hint: Option<Duration>) -> Decision {
        self.failures = self.failures.saturating_add(1);
        if self.max_attempts != 0 && self.failures > self.max_attempts {
            return Decision::GiveUp {
                attempts: self.failures - 1,
            };
        }
        let mut delay = self.delay(self.failures - 1, unit);
        if let Some(hint) = server_hint {
            delay = delay.max(hint.min(self.retry_after_max));
        }
        Decision::Retry {
            attempt: self.failures,
            delay,
        }
    }

    /// The current connection proved itself (first pong, or stable time): reset the count.
    pub fn on_proof(&mut self) {
        self.failures = 0;
    }

    pub fn failures(&self) -> u32 {
        self.failures
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(max_attempts: u32) -> Reconnect {
        Reconnect::new(&Config {
            max_attempts,
            ..Config::default()
        })
    }

    #[test]
    fn delay_is_within_zero_and_cap_and_ceiling_grows() {
        let r = policy(0);
        let mut last = Duration::ZERO;
        for n in 0..40 {
            let c = r.ceiling(n);
            assert!(c >= last, "ceiling shrank at {n}");
            assert!(c <= Duration::from_secs(30));
            last = c;
            for i in 0..50 {
                let d = r.delay(n, i as f64 / 50.0);
                assert!(
                    d <= c && d >= Duration::from_millis(50),
                    "{d:?} at attempt {n}"
                );
            }
        }
        assert_eq!(r.ceiling(0), Duration::from_secs(1));
        assert_eq!(r.ceiling(1), Duration::from_secs(2));
        assert_eq!(r.ceiling(4), Duration::from_secs(16));
        assert_eq!(r.ceiling(5), Duration::from_secs(30));
        assert_eq!(r.ceiling(1000), Duration::from_secs(30));
    }

    #[test]
    fn full_jitter_spreads_over_the_whole_range() {
        let r = policy(0);
        let mut rng = fastrand::Rng::with_seed(7);
        let draws: Vec<Duration> = (0..10_000).map(|_| r.delay(3, rng.f64())).collect();
        let ceiling = r.ceiling(3);
        let low = draws.iter().filter(|d| **d < ceiling / 4).count();
        let high = draws.iter().filter(|d| **d > ceiling * 3 / 4).count();
        // Uniform: about a quarter in each end.
        assert!((2000..3000).contains(&low), "{low}");
        assert!((2000..3000).contains(&high), "{high}");
    }

    #[test]
    fn no_jitter_uses_the_ceiling() {
        let r = Reconnect::new(&Config {
            backoff_jitter: false,
            ..Config::default()
        });
        assert_eq!(r.delay(2, 0.0), Duration::from_secs(4));
    }

    #[test]
    fn attempts_grow_and_reset_only_after_proof() {
        let mut r = policy(0);
        let mut ceilings = Vec::new();
        for _ in 0..4 {
            match r.on_failure(0.999_999, None) {
                Decision::Retry { attempt, delay } => ceilings.push((attempt, delay.as_secs())),
                d => panic!("{d:?}"),
            }
        }
        assert_eq!(ceilings, vec![(1, 0), (2, 1), (3, 3), (4, 7)]);
        // A connection that opened but never proved itself does not reset the count.
        assert!(matches!(
            r.on_failure(0.5, None),
            Decision::Retry { attempt: 5, .. }
        ));
        r.on_proof();
        assert_eq!(r.failures(), 0);
        assert!(matches!(
            r.on_failure(0.5, None),
            Decision::Retry { attempt: 1, .. }
        ));
    }

    #[test]
    fn gives_up_after_max_attempts() {
        let mut r = policy(2);
        assert!(matches!(
            r.on_failure(0.1, None),
            Decision::Retry { attempt: 1, .. }
        ));
        assert!(matches!(
            r.on_failure(0.1, None),
            Decision::Retry { attempt: 2, .. }
        ));
        assert_eq!(r.on_failure(0.1, None), Decision::GiveUp { attempts: 2 });
    }

    #[test]
    fn retry_after_is_honoured_in_full_up_to_its_own_ceiling() {
        let mut r = policy(0);
        let hint = Some(Duration::from_secs(5));
        assert_eq!(
            r.on_failure(0.0, hint),
            Decision::Retry {
                attempt: 1,
                delay: Duration::from_secs(5)
            }
        );
        // 120 s is honoured although the backoff cap is 30 s.
        let mut r = policy(0);
        assert_eq!(
            r.on_failure(0.0, Some(Duration::from_secs(120))),
            Decision::Retry {
                attempt: 1,
                delay: Duration::from_secs(120)
            }
        );
        // Up to retry_after_max (default 1 h), no further.
        let mut r = policy(0);
        assert_eq!(
            r.on_failure(0.0, Some(Duration::from_secs(86_400))),
            Decision::Retry {
                attempt: 1,
                delay: Duration::from_secs(3600)
            }
        );
        let mut r = Reconnect::new(&Config {
            retry_after_max: Duration::from_secs(90),
            ..Config::default()
        });
        assert_eq!(
            r.on_failure(0.0, Some(Duration::from_secs(u64::MAX))),
            Decision::Retry {
                attempt: 1,
                delay: Duration::from_secs(90)
            }
        );
        // A short hint never shortens the backoff; zero ceiling ignores hints.
        let mut r = Reconnect::new(&Config {
            retry_after_max: Duration::ZERO,
            backoff_jitter: false,
            ..Config::default()
        });
        assert_eq!(
            r.on_failure(0.0, Some(Duration::from_secs(600))),
            Decision::Retry {
                attempt: 1,
                delay: Duration::from_secs(1)
            }
        );
    }

    #[test]
    fn backoff_1_1_is_no_tight_loop() {
        // The smallest backoff there is: base = cap = 1 ms, and a floor of 0 asked for.
        let mut r = Reconnect::new(&Config {
            backoff_base: Duration::from_millis(1),
            backoff_cap: Duration::from_millis(1),
            backoff_min: Duration::ZERO,
            ..Config::default()
        });
        let mut total = Duration::ZERO;
        for i in 0..1000 {
            match r.on_failure(i as f64 / 1000.0, None) {
                Decision::Retry { delay, .. } => {
                    assert!(delay >= Duration::from_millis(5), "{delay:?}");
                    total += delay;
                }
                d => panic!("{d:?}"),
            }
        }
        // 1,252 attempts in 2 s was the tight loop; now at most 400.
        assert!(total >= Duration::from_secs(5), "{total:?}");
    }
}
