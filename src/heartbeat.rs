//! Heartbeat accounting: pure code, time comes in as an argument.
//!
//! The connection task asks [`Heartbeat::next_wakeup`] when to wake, calls [`Heartbeat::poll`]
//! then, and reports pongs and inbound frames. Nothing here sleeps or touches a socket, so the
//! whole policy is tested by feeding it instants.
//!
//! # Detection bound
//! Let `I` = ping interval, `T` = pong timeout, `M` = max missed. If the link goes silent right
//! after a pong, the client declares it dead exactly
//! - `I + M×T` later with re-probing (default: after a miss the next ping goes out at once), or
//! - `M×I + T` later without re-probing (pings keep the regular cadence).
//!
//! With the defaults (30 s, 10 s, 3, re-probe on) that is 60 s.

use std::time::Duration;
use tokio::time::Instant;

use crate::config::{Config, Liveness};

/// What the connection task must do after [`Heartbeat::poll`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tick {
    /// Nothing due yet.
    Idle,
    /// Send a heartbeat ping now (its send time is `now`).
    Ping,
    /// The outstanding ping missed its pong; `missed` in a row so far. If `ping`, a re-probe
    /// ping is due now as well.
    Missed { missed: u32, ping: bool },
    /// `missed` pings in a row went unanswered: the link is dead.
    Dead { missed: u32 },
}

/// The heartbeat state of one open connection.
#[derive(Clone, Debug)]
pub struct Heartbeat {
    interval: Duration,
    timeout: Duration,
    max_missed: u32,
    reprobe: bool,
    any_inbound: bool,
    next_ping: Instant,
    /// The ping whose pong timeout is running (the latest one sent).
    outstanding: Option<Probe>,
    /// Send times of every ping not yet answered, oldest first, the outstanding one included.
    /// Pongs come back in order on one stream, so a late pong answers the oldest of these.
    unanswered: Ring,
    missed: u32,
}

/// A small FIFO of send times, kept inline (no allocation per connection). Past its capacity the
/// oldest entry is forgotten; only the RTT attributed to a pong that late is then approximate.
#[derive(Clone, Debug)]
struct Ring {
    at: [Option<Instant>; 4],
    head: usize,
    len: usize,
}

impl Ring {
    const fn new() -> Ring {
        Ring {
            at: [None; 4],
            head: 0,
            len: 0,
        }
    }
    fn push(&mut self, t: Instant) {
        let cap = self.at.len();
        if self.len == cap {
            self.pop();
        }
        self.at[(self.head + self.len) % cap] = Some(t);
        self.len += 1;
    }
    fn pop(&mut self) -> Option<Instant> {
        if self.len == 0 {
            return None;
        }
        let t = self.at[self.head].take();
        self.head = (self.head + 1) % self.at.len();
        self.len -= 1;
        t
    }
    fn is_empty(&self) -> bool {
        self.len == 0
    }
    fn clear(&mut self) {
        *self = Ring::new();
    }
}

/// The outstanding ping: `due` anchors its deadline and the schedule (its send time, for the
/// round trip, is in `unanswered`).
#[derive(Clone, Copy, Debug)]
struct Probe {
    due: Instant,
}

/// A timer that fires this late still counts from when it was due, so timer granularity does not
/// add up across the probes of one verdict. Later than this (the thread was busy, the process was
/// suspended) the schedule restarts from now, so the peer always gets a full pong timeout.
const ON_TIME: Duration = Duration::from_millis(50);

fn anchor(due: Instant, now: Instant) -> Instant {
    if now.saturating_duration_since(due) <= ON_TIME {
        due
    } else {
        now
    }
}

impl Heartbeat {
    /// Starts the schedule for a connection that opened at `now`: first ping at `now + interval`.
    pub fn new(cfg: &Config, now: Instant) -> Self {
        Heartbeat {
            interval: cfg.ping_interval,
            timeout: cfg.pong_timeout,
            max_missed: cfg.max_missed.max(1),
            reprobe: cfg.reprobe,
            any_inbound: cfg.liveness == Liveness::AnyInbound,
            next_ping: now + cfg.ping_interval,
            outstanding: None,
            unanswered: Ring::new(),
            missed: 0,
        }
    }

    /// When [`poll`](Self::poll) has something to do next.
    pub fn next_wakeup(&self) -> Instant {
        match self.outstanding {
            Some(p) => p.due + self.timeout,
            None => self.next_ping,
        }
    }

    /// When the link will be declared dead if no pong arrives from now on. Writes are bounded by
    /// it, so a stalled socket cannot push the verdict past the documented bound.
    pub fn dead_by(&self) -> Instant {
        let step = if self.reprobe {
            self.timeout
        } else {
            self.interval
        };
        let first_deadline = match self.outstanding {
            Some(p) => p.due + self.timeout,
            None => self.next_ping + self.timeout,
        };
        let later_misses = self.max_missed.saturating_sub(self.missed + 1);
        first_deadline + step * later_misses
    }

    /// Misses in a row so far.
    pub fn missed(&self) -> u32 {
        self.missed
    }

    /// Advances the schedule to `now`.
    pub fn poll(&mut self, now: Instant) -> Tick {
        if let Some(p) = self.outstanding {
            let deadline = p.due + self.timeout;
            if now < deadline {
                return Tick::Idle;
            }
            self.outstanding = None;
            self.missed += 1;
            if self.missed >= self.max_missed {
                return Tick::Dead {
                    missed: self.missed,
                };
            }
            if self.reprobe {
                let due = anchor(deadline, now);
                self.outstanding = Some(Probe { due });
                self.unanswered.push(now);
                self.next_ping = due + self.interval;
                return Tick::Missed {
                    missed: self.missed,
                    ping: true,
                };
            }
            // Regular cadence: the next ping is one interval after the missed one.
            self.next_ping = p.due + self.interval;
            return Tick::Missed {
                missed: self.missed,
                ping: false,
            };
        }
        if now >= self.next_ping {
            let due = anchor(self.next_ping, now);
            self.outstanding = Some(Probe { due });
            self.unanswered.push(now);
            self.next_ping = due + self.interval;
            return Tick::Ping;
        }
        Tick::Idle
    }

    /// A pong arrived. Any pong proves the link alive and clears the miss count. It answers the
    /// oldest unanswered ping (pongs come back in order), whose round-trip time it returns; the
    /// outstanding ping is answered only once every ping before it has been.
    pub fn on_pong(&mut self, now: Instant) -> Option<Duration> {
        self.missed = 0;
        let sent = self.unanswered.pop()?;
        if self.unanswered.is_empty() {
            if let Some(p) = self.outstanding.take() {
                self.next_ping = p.due + self.interval;
            }
        }
        Some(now.saturating_duration_since(sent))
    }

    /// Some other frame arrived. Under [`Liveness::AnyInbound`] it answers the outstanding ping
    /// and clears the miss count; under [`Liveness::PongOnly`] it changes nothing.
    pub fn on_inbound(&mut self, _now: Instant) {
        if self.any_inbound {
            self.missed = 0;
            self.outstanding = None;
            self.unanswered.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(interval: u64, timeout: u64, max: u32, reprobe: bool) -> Config {
        Config {
            ping_interval: Duration::from_secs(interval),
            pong_timeout: Duration::from_secs(timeout),
            max_missed: max,
            reprobe,
            ..Config::default()
        }
    }

    /// Drives the heartbeat on a virtual clock, waking exactly at each requested instant, with a
    /// silent peer. Returns the instant of death and the ticks seen.
    fn run_silent(hb: &mut Heartbeat, t0: Instant) -> (Duration, Vec<Tick>) {
        let mut ticks = Vec::new();
        for _ in 0..1000 {
            let now = hb.next_wakeup();
            let tick = hb.poll(now);
            ticks.push(tick);
            if let Tick::Dead { .. } = tick {
                return (now - t0, ticks);
            }
        }
        panic!("never declared dead: {ticks:?}");
    }

    #[test]
    fn dead_exactly_at_bound_with_reprobe() {
        let t0 = Instant::now();
        let mut hb = Heartbeat::new(&cfg(30, 10, 3, true), t0);
        let (dead_at, ticks) = run_silent(&mut hb, t0);
        assert_eq!(dead_at, Duration::from_secs(30 + 3 * 10));
        assert_eq!(
            ticks,
            vec![
                Tick::Ping,
                Tick::Missed {
                    missed: 1,
                    ping: true
                },
                Tick::Missed {
                    missed: 2,
                    ping: true
                },
                Tick::Dead { missed: 3 },
            ]
        );
    }

    #[test]
    fn dead_exactly_at_bound_without_reprobe() {
        let t0 = Instant::now();
        let mut hb = Heartbeat::new(&cfg(30, 10, 3, false), t0);
        let (dead_at, _) = run_silent(&mut hb, t0);
        assert_eq!(dead_at, Duration::from_secs(3 * 30 + 10));
    }

    #[test]
    fn bound_holds_from_last_pong_not_from_open() {
        let t0 = Instant::now();
        let mut hb = Heartbeat::new(&cfg(30, 10, 3, true), t0);
        // Healthy for a while: each ping answered after 5 ms.
        let mut last_pong = t0;
        for _ in 0..5 {
            let at = hb.next_wakeup();
            assert_eq!(hb.poll(at), Tick::Ping);
            last_pong = at + Duration::from_millis(5);
            assert_eq!(hb.on_pong(last_pong), Some(Duration::from_millis(5)));
        }
        // Then silence. The next ping goes out one interval after the last one was *sent*.
        let sent_last = last_pong - Duration::from_millis(5);
        let (dead_at, _) = run_silent(&mut hb, sent_last);
        assert_eq!(dead_at, Duration::from_secs(60));
    }

    #[test]
    fn dead_by_predicts_the_verdict() {
        for reprobe in [true, false] {
            let t0 = Instant::now();
            let mut hb = Heartbeat::new(&cfg(30, 10, 3, reprobe), t0);
            let predicted = hb.dead_by();
            // The prediction holds at every step of a silent run.
            for _ in 0..10 {
                assert_eq!(hb.dead_by(), predicted);
                let now = hb.next_wakeup();
                if let Tick::Dead { .. } = hb.poll(now) {
                    assert_eq!(now, predicted, "reprobe={reprobe}");
                    break;
                }
            }
        }
    }

    #[test]
    fn pong_after_a_miss_resets_the_count() {
        let t0 = Instant::now();
        let mut hb = Heartbeat::new(&cfg(30, 10, 3, true), t0);
        let s = Duration::from_secs;
        assert_eq!(hb.poll(t0 + s(30)), Tick::Ping);
        assert_eq!(
            hb.poll(t0 + s(40)),
            Tick::Missed {
                missed: 1,
                ping: true
            }
        );
        assert_eq!(
            hb.poll(t0 + s(50)),
            Tick::Missed {
                missed: 2,
                ping: true
            }
        );
        // The server answers all three pings late, in order, at 51 s: the first pong belongs
        // to the ping of 30 s, the last to the re-probe of 50 s.
        assert_eq!(hb.on_pong(t0 + s(51)), Some(s(21)));
        assert_eq!(hb.missed(), 0);
        assert_eq!(
            hb.next_wakeup(),
            t0 + s(60),
            "the re-probe of 50 s is still outstanding"
        );
        assert_eq!(hb.on_pong(t0 + s(51)), Some(s(11)));
        assert_eq!(hb.on_pong(t0 + s(51)), Some(s(1)));
        // Next ping one interval after the answered re-probe; three fresh misses needed now.
        assert_eq!(hb.next_wakeup(), t0 + s(80));
        assert_eq!(hb.poll(t0 + s(80)), Tick::Ping);
        assert_eq!(
            hb.poll(t0 + s(90)),
            Tick::Missed {
                missed: 1,
                ping: true
            }
        );
        assert_eq!(
            hb.poll(t0 + s(100)),
            Tick::Missed {
                missed: 2,
                ping: true
            }
        );
        assert_eq!(hb.poll(t0 + s(110)), Tick::Dead { missed: 3 });
    }

    #[test]
    fn late_pong_without_reprobe_still_clears_misses() {
        let t0 = Instant::now();
        let mut hb = Heartbeat::new(&cfg(30, 10, 3, false), t0);
        let s = Duration::from_secs;
        assert_eq!(hb.poll(t0 + s(30)), Tick::Ping);
        assert_eq!(
            hb.poll(t0 + s(40)),
            Tick::Missed {
                missed: 1,
                ping: false
            }
        );
        assert_eq!(hb.next_wakeup(), t0 + s(60));
        // A pong arriving after its ping was counted missed: the link is alive, and the RTT is
        // that ping's real one.
        assert_eq!(hb.on_pong(t0 + s(45)), Some(s(15)));
        assert_eq!(hb.missed(), 0);
        assert_eq!(
            hb.on_pong(t0 + s(46)),
            None,
            "an unsolicited pong answers nothing"
        );
    }

    #[test]
    fn late_timers_do_not_add_up_but_a_long_stall_restarts_the_schedule() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut hb = Heartbeat::new(&cfg(30, 10, 3, true), t0);
        // Every wake-up 1 ms late (timer granularity): the verdict still lands 1 ms after 60 s.
        let mut dead_at = None;
        for _ in 0..10 {
            let now = hb.next_wakeup() + ms(1);
            if let Tick::Dead { .. } = hb.poll(now) {
                dead_at = Some(now - t0);
                break;
            }
        }
        assert_eq!(dead_at, Some(Duration::from_secs(60) + ms(1)));
        // A thread stalled (or a process suspended) for minutes: the ping goes out late, and the
        // peer still gets a whole pong timeout from when it was really sent.
        let mut hb = Heartbeat::new(&cfg(30, 10, 3, true), t0);
        let resumed = t0 + Duration::from_secs(600);
        assert_eq!(hb.poll(resumed), Tick::Ping);
        assert_eq!(hb.next_wakeup(), resumed + Duration::from_secs(10));
        assert_eq!(hb.on_pong(resumed + ms(3)), Some(ms(3)));
    }

    #[test]
    fn a_late_pong_does_not_answer_the_reprobe() {
        // Ping at 30 s answered 15 s late (timeout 10 s), then the link goes silent. The pong is
        // the first ping's: the re-probe of 40 s keeps its deadline, so the verdict comes 40 s
        // after the answered ping was sent, inside the bound, and the RTT reads 15 s.
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut hb = Heartbeat::new(&cfg(30, 10, 3, true), t0);
        assert_eq!(hb.poll(t0 + s(30)), Tick::Ping);
        assert_eq!(
            hb.poll(t0 + s(40)),
            Tick::Missed {
                missed: 1,
                ping: true
            }
        );
        assert_eq!(hb.on_pong(t0 + s(45)), Some(s(15)));
        assert_eq!(
            hb.poll(t0 + s(50)),
            Tick::Missed {
                missed: 1,
                ping: true
            }
        );
        assert_eq!(
            hb.poll(t0 + s(60)),
            Tick::Missed {
                missed: 2,
                ping: true
            }
        );
        assert_eq!(hb.poll(t0 + s(70)), Tick::Dead { missed: 3 });
    }

    #[test]
    fn ring_keeps_the_newest_send_times() {
        let t0 = Instant::now();
        let mut r = Ring::new();
        for i in 0..6 {
            r.push(t0 + Duration::from_secs(i));
        }
        let got: Vec<_> = std::iter::from_fn(|| r.pop()).collect();
        assert_eq!(
            got,
            (2..6)
                .map(|i| t0 + Duration::from_secs(i))
                .collect::<Vec<_>>()
        );
    }

    #[test]
    fn nothing_happens_before_the_interval() {
        let t0 = Instant::now();
        let mut hb = Heartbeat::new(&cfg(30, 10, 3, true), t0);
        assert_eq!(hb.poll(t0 + Duration::from_millis(29_999)), Tick::Idle);
        assert_eq!(hb.poll(t0 + Duration::from_secs(30)), Tick::Ping);
        assert_eq!(hb.poll(t0 + Duration::from_millis(39_999)), Tick::Idle);
    }

    #[test]
    fn any_inbound_policy_answers_pings() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut c = cfg(30, 10, 3, true);
        c.liveness = Liveness::AnyInbound;
        let mut hb = Heartbeat::new(&c, t0);
        assert_eq!(hb.poll(t0 + s(30)), Tick::Ping);
        assert_eq!(
            hb.poll(t0 + s(40)),
            Tick::Missed {
                missed: 1,
                ping: true
            }
        );
        hb.on_inbound(t0 + s(41)); // a data frame, not a pong
        assert_eq!(hb.missed(), 0);
        assert_eq!(
            hb.poll(t0 + s(50)),
            Tick::Idle,
            "inbound frame answered the re-probe"
        );
        // Under the default policy the same frame changes nothing.
        let mut hb = Heartbeat::new(&cfg(30, 10, 3, true), t0);
        assert_eq!(hb.poll(t0 + s(30)), Tick::Ping);
        hb.on_inbound(t0 + s(31));
        assert_eq!(
            hb.poll(t0 + s(40)),
            Tick::Missed {
                missed: 1,
                ping: true
            }
        );
    }

    #[test]
    fn reprobe_switch_changes_cadence() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut on = Heartbeat::new(&cfg(30, 10, 5, true), t0);
        let mut off = Heartbeat::new(&cfg(30, 10, 5, false), t0);
        assert_eq!(on.poll(t0 + s(30)), Tick::Ping);
        assert_eq!(off.poll(t0 + s(30)), Tick::Ping);
        assert_eq!(
            on.poll(t0 + s(40)),
            Tick::Missed {
                missed: 1,
                ping: true
            }
        );
        assert_eq!(
            off.poll(t0 + s(40)),
            Tick::Missed {
                missed: 1,
                ping: false
            }
        );
        assert_eq!(on.next_wakeup(), t0 + s(50));
        assert_eq!(off.next_wakeup(), t0 + s(60));
    }

    #[test]
    fn one_miss_allowed_means_first_miss_is_death() {
        let t0 = Instant::now();
        let mut hb = Heartbeat::new(&cfg(1, 1, 1, true), t0);
        let (dead_at, _) = run_silent(&mut hb, t0);
        assert_eq!(dead_at, Duration::from_secs(2));
    }
}
