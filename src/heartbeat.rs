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
//!
//! # Delivery confirmation
//! Each ping carries a *mark*: how many messages the connection had fully written when it went
//! out. The peer reads a stream in order, so the pong that answers it proves every message up to
//! the mark was read. Pings are numbered per connection. A protocol Ping carries its number as
//! its payload and is answered only by a Pong echoing it (a peer may answer just the latest of
//! several: RFC 6455 5.5.3); unsolicited Pongs answer nothing. Text pongs carry nothing, so the
//! n-th text pong answers the n-th text ping, counting the host's own `ping` texts too (the
//! server answers those as well). A ping whose record was forgotten (too many outstanding, or
//! cleared by [`Liveness::AnyInbound`]) keeps its place in that order, so its pong confirms
//! nothing rather than the wrong ping's mark.

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
    /// Send times and marks of every ping not yet answered, oldest first, the outstanding one
    /// included. Pongs come back in order on one stream, so a late pong answers the oldest.
    unanswered: Ring,
    /// Unanswered pings older than everything in `unanswered`, whose records were dropped: the
    /// next pongs answer these first.
    forgotten: u32,
    /// Pings sent on this connection (the last one's number), and how many have been answered.
    sent_n: u64,
    answered_n: u64,
    missed: u32,
    /// Last time bytes of ours that had been waiting for the socket were taken by it (see
    /// [`on_progress`](Self::on_progress)).
    progress_at: Option<Instant>,
}

/// Marks a ring entry as one of our heartbeat probes (marks never come near 2^63).
const PROBE: u64 = 1 << 63;

/// What a pong answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pong {
    /// Round trip of the ping it answered, if that ping's send time is known.
    pub rtt: Option<Duration>,
    /// The answered ping's mark (messages written before it), if known.
    pub mark: Option<u64>,
    /// It answered one of our heartbeat probes (not only a ping the host or `hb_close` sent).
    pub probe: bool,
}

/// A small FIFO of (send time, mark), kept inline (no allocation per connection). Past its
/// capacity the oldest entry is dropped; `push` says so, and the pong that answers it then
/// reports neither a round trip nor a mark.
#[derive(Clone, Debug)]
struct Ring {
    at: [Option<(Instant, u64)>; 4],
    head: u8,
    len: u8,
}

impl Ring {
    const fn new() -> Ring {
        Ring {
            at: [None; 4],
            head: 0,
            len: 0,
        }
    }
    /// Appends; true if the oldest entry had to be dropped to make room.
    fn push(&mut self, t: Instant, mark: u64) -> bool {
        let cap = self.at.len();
        let full = usize::from(self.len) == cap;
        if full {
            self.pop();
        }
        self.at[(usize::from(self.head) + usize::from(self.len)) % cap] = Some((t, mark));
        self.len += 1;
        full
    }
    fn pop(&mut self) -> Option<(Instant, u64)> {
        if self.len == 0 {
            return None;
        }
        let t = self.at[usize::from(self.head)].take();
        self.head = (self.head + 1) % self.at.len() as u8;
        self.len -= 1;
        t
    }
    fn has_probe(&self) -> bool {
        let cap = self.at.len();
        (0..usize::from(self.len)).any(|i| {
            self.at[(usize::from(self.head) + i) % cap].is_some_and(|(_, m)| m & PROBE != 0)
        })
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
            forgotten: 0,
            sent_n: 0,
            answered_n: 0,
            missed: 0,
            progress_at: None,
        }
    }

    /// When [`poll`](Self::poll) has something to do next.
    pub fn next_wakeup(&self) -> Instant {
        match self.outstanding {
            Some(p) => p.due + self.timeout,
            None => self.next_ping,
        }
    }

    /// When the link will be declared dead if no pong (and no write progress) arrives from now
    /// on: the documented bound, as the tests check it.
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

    /// Records a ping sent at `now` after `mark` messages; returns its number.
    fn sent(&mut self, now: Instant, mark: u64, probe: bool) -> u64 {
        let tagged = if probe { mark | PROBE } else { mark };
        if self.unanswered.push(now, tagged) {
            self.forgotten = self.forgotten.saturating_add(1);
        }
        self.sent_n += 1;
        self.sent_n
    }

    /// The number of the last ping sent: the payload of a protocol Ping.
    pub fn last_ping(&self) -> u64 {
        self.sent_n
    }

    /// A ping that is not a heartbeat probe went out after `mark` messages: the host's own text
    /// `ping`, or the one `hb_close` sends to learn what the server has read. Its pong comes in
    /// order with the probes' and confirms its mark; it counts for nothing else. Returns its
    /// number.
    pub fn extra_ping(&mut self, now: Instant, mark: u64) -> u64 {
        self.sent(now, mark, false)
    }

    /// Advances the schedule to `now`. `mark` is the number of messages fully written so far:
    /// a ping this asks for is sent after them (see the module's "Delivery confirmation").
    pub fn poll(&mut self, now: Instant, mark: u64) -> Tick {
        if let Some(mut p) = self.outstanding {
            let mut deadline = p.due + self.timeout;
            if let Some(at) = self.progress_at.filter(|&at| now >= deadline && at > p.due) {
                // Our data kept draining since the ping went out, so the peer is reading and the
                // ping may still be queued behind that data: its pong timeout restarts from the
                // last progress.
                p.due = at;
                self.outstanding = Some(p);
                deadline = at + self.timeout;
            }
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
                self.sent(now, mark, true);
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
            self.sent(now, mark, true);
            self.next_ping = due + self.interval;
            return Tick::Ping;
        }
        Tick::Idle
    }

    /// A text pong arrived. Any pong proves the link alive and clears the miss count. It answers
    /// the oldest unanswered ping (pongs come back in order), whose round-trip time and mark it
    /// returns; the outstanding probe is answered only once every probe before it has been.
    pub fn on_pong(&mut self, now: Instant) -> Pong {
        self.missed = 0;
        self.answer(now, 1)
    }

    /// A protocol Pong arrived with `payload`. If it echoes the number of one of our unanswered
    /// pings, it answers that one and every one before it (see [`on_pong`](Self::on_pong));
    /// otherwise it is not an answer to us and `None` comes back.
    pub fn on_protocol_pong(&mut self, now: Instant, payload: &[u8]) -> Option<Pong> {
        let n = u64::from_be_bytes(payload.try_into().ok()?);
        if n <= self.answered_n || n > self.sent_n {
            return None;
        }
        self.missed = 0;
        Some(self.answer(now, n - self.answered_n))
    }

    /// Answers the `count` oldest unanswered pings (fewer if fewer are unanswered).
    fn answer(&mut self, now: Instant, count: u64) -> Pong {
        let mut out = Pong {
            rtt: None,
            mark: None,
            probe: false,
        };
        for _ in 0..count {
            if self.answered_n >= self.sent_n {
                break; // unsolicited
            }
            self.answered_n += 1;
            if self.forgotten > 0 {
                self.forgotten -= 1;
                continue;
            }
            if let Some((sent, tagged)) = self.unanswered.pop() {
                out.mark = Some(tagged & !PROBE);
                if tagged & PROBE != 0 {
                    out.probe = true;
                    out.rtt = Some(now.saturating_duration_since(sent));
                }
            }
        }
        if self.forgotten == 0 && !self.unanswered.has_probe() {
            if let Some(p) = self.outstanding.take() {
                self.next_ping = p.due + self.interval;
            }
        }
        out
    }

    /// Bytes of ours that were waiting for the socket (a backlog: the socket had refused more)
    /// were taken by it at `now`: the peer is reading. A ping sent before that may be queued
    /// behind our own data, so its pong timeout counts from the last such progress: a slow
    /// uplink whose bytes keep moving is never declared dead, and one that stops draining is
    /// declared dead within the bound counted from its last progress. A write the socket takes
    /// at once is no evidence (a black-holed link takes bytes until its buffers are full).
    pub fn on_progress(&mut self, now: Instant) {
        self.progress_at = Some(now);
    }

    /// Pings of ours answered on this connection, and pings sent.
    pub fn answered(&self) -> (u64, u64) {
        (self.answered_n, self.sent_n)
    }

    /// Some other frame arrived. Under [`Liveness::AnyInbound`] it answers the outstanding ping
    /// and clears the miss count; under [`Liveness::PongOnly`] it changes nothing.
    pub fn on_inbound(&mut self, _now: Instant) {
        if self.any_inbound {
            self.missed = 0;
            self.outstanding = None;
            // Their pongs may still come, first: they must not be taken for later pings'.
            self.forgotten = self
                .forgotten
                .saturating_add(u32::from(self.unanswered.len));
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
            let tick = hb.poll(now, 0);
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
            assert_eq!(hb.poll(at, 0), Tick::Ping);
            last_pong = at + Duration::from_millis(5);
            assert_eq!(hb.on_pong(last_pong).rtt, Some(Duration::from_millis(5)));
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
                if let Tick::Dead { .. } = hb.poll(now, 0) {
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
        assert_eq!(hb.poll(t0 + s(30), 0), Tick::Ping);
        assert_eq!(
            hb.poll(t0 + s(40), 0),
            Tick::Missed {
                missed: 1,
                ping: true
            }
        );
        assert_eq!(
            hb.poll(t0 + s(50), 0),
            Tick::Missed {
                missed: 2,
                ping: true
            }
        );
        // The server answers all three pings late, in order, at 51 s: the first pong belongs
        // to the ping of 30 s, the last to the re-probe of 50 s.
        assert_eq!(hb.on_pong(t0 + s(51)).rtt, Some(s(21)));
        assert_eq!(hb.missed(), 0);
        assert_eq!(
            hb.next_wakeup(),
            t0 + s(60),
            "the re-probe of 50 s is still outstanding"
        );
        assert_eq!(hb.on_pong(t0 + s(51)).rtt, Some(s(11)));
        assert_eq!(hb.on_pong(t0 + s(51)).rtt, Some(s(1)));
        // Next ping one interval after the answered re-probe; three fresh misses needed now.
        assert_eq!(hb.next_wakeup(), t0 + s(80));
        assert_eq!(hb.poll(t0 + s(80), 0), Tick::Ping);
        assert_eq!(
            hb.poll(t0 + s(90), 0),
            Tick::Missed {
                missed: 1,
                ping: true
            }
        );
        assert_eq!(
            hb.poll(t0 + s(100), 0),
            Tick::Missed {
                missed: 2,
                ping: true
            }
        );
        assert_eq!(hb.poll(t0 + s(110), 0), Tick::Dead { missed: 3 });
    }

    #[test]
    fn late_pong_without_reprobe_still_clears_misses() {
        let t0 = Instant::now();
        let mut hb = Heartbeat::new(&cfg(30, 10, 3, false), t0);
        let s = Duration::from_secs;
        assert_eq!(hb.poll(t0 + s(30), 0), Tick::Ping);
        assert_eq!(
            hb.poll(t0 + s(40), 0),
            Tick::Missed {
                missed: 1,
                ping: false
            }
        );
        assert_eq!(hb.next_wakeup(), t0 + s(60));
        // A pong arriving after its ping was counted missed: the link is alive, and the RTT is
        // that ping's real one.
        assert_eq!(hb.on_pong(t0 + s(45)).rtt, Some(s(15)));
        assert_eq!(hb.missed(), 0);
        assert_eq!(
            hb.on_pong(t0 + s(46)).rtt,
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
            if let Tick::Dead { .. } = hb.poll(now, 0) {
                dead_at = Some(now - t0);
                break;
            }
        }
        assert_eq!(dead_at, Some(Duration::from_secs(60) + ms(1)));
        // A thread stalled (or a process suspended) for minutes: the ping goes out late, and the
        // peer still gets a whole pong timeout from when it was really sent.
        let mut hb = Heartbeat::new(&cfg(30, 10, 3, true), t0);
        let resumed = t0 + Duration::from_secs(600);
        assert_eq!(hb.poll(resumed, 0), Tick::Ping);
        assert_eq!(hb.next_wakeup(), resumed + Duration::from_secs(10));
        assert_eq!(hb.on_pong(resumed + ms(3)).rtt, Some(ms(3)));
    }

    #[test]
    fn a_late_pong_does_not_answer_the_reprobe() {
        // Ping at 30 s answered 15 s late (timeout 10 s), then the link goes silent. The pong is
        // the first ping's: the re-probe of 40 s keeps its deadline, so the verdict comes 40 s
        // after the answered ping was sent, inside the bound, and the RTT reads 15 s.
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut hb = Heartbeat::new(&cfg(30, 10, 3, true), t0);
        assert_eq!(hb.poll(t0 + s(30), 0), Tick::Ping);
        assert_eq!(
            hb.poll(t0 + s(40), 0),
            Tick::Missed {
                missed: 1,
                ping: true
            }
        );
        assert_eq!(hb.on_pong(t0 + s(45)).rtt, Some(s(15)));
        assert_eq!(
            hb.poll(t0 + s(50), 0),
            Tick::Missed {
                missed: 1,
                ping: true
            }
        );
        assert_eq!(
            hb.poll(t0 + s(60), 0),
            Tick::Missed {
                missed: 2,
                ping: true
            }
        );
        assert_eq!(hb.poll(t0 + s(70), 0), Tick::Dead { missed: 3 });
    }

    #[test]
    fn ring_keeps_the_newest_send_times() {
        let t0 = Instant::now();
        let mut r = Ring::new();
        let dropped: Vec<bool> = (0..6)
            .map(|i| r.push(t0 + Duration::from_secs(i), i))
            .collect();
        assert_eq!(dropped, [false, false, false, false, true, true]);
        let got: Vec<_> = std::iter::from_fn(|| r.pop()).collect();
        assert_eq!(
            got,
            (2..6)
                .map(|i| (t0 + Duration::from_secs(i), i))
                .collect::<Vec<_>>()
        );
    }

    #[test]
    fn nothing_happens_before_the_interval() {
        let t0 = Instant::now();
        let mut hb = Heartbeat::new(&cfg(30, 10, 3, true), t0);
        assert_eq!(hb.poll(t0 + Duration::from_millis(29_999), 0), Tick::Idle);
        assert_eq!(hb.poll(t0 + Duration::from_secs(30), 0), Tick::Ping);
        assert_eq!(hb.poll(t0 + Duration::from_millis(39_999), 0), Tick::Idle);
    }

    #[test]
    fn any_inbound_policy_answers_pings() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut c = cfg(30, 10, 3, true);
        c.liveness = Liveness::AnyInbound;
        let mut hb = Heartbeat::new(&c, t0);
        assert_eq!(hb.poll(t0 + s(30), 0), Tick::Ping);
        assert_eq!(
            hb.poll(t0 + s(40), 0),
            Tick::Missed {
                missed: 1,
                ping: true
            }
        );
        hb.on_inbound(t0 + s(41)); // a data frame, not a pong
        assert_eq!(hb.missed(), 0);
        assert_eq!(
            hb.poll(t0 + s(50), 0),
            Tick::Idle,
            "inbound frame answered the re-probe"
        );
        // Under the default policy the same frame changes nothing.
        let mut hb = Heartbeat::new(&cfg(30, 10, 3, true), t0);
        assert_eq!(hb.poll(t0 + s(30), 0), Tick::Ping);
        hb.on_inbound(t0 + s(31));
        assert_eq!(
            hb.poll(t0 + s(40), 0),
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
        assert_eq!(on.poll(t0 + s(30), 0), Tick::Ping);
        assert_eq!(off.poll(t0 + s(30), 0), Tick::Ping);
        assert_eq!(
            on.poll(t0 + s(40), 0),
            Tick::Missed {
                missed: 1,
                ping: true
            }
        );
        assert_eq!(
            off.poll(t0 + s(40), 0),
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

    #[test]
    fn a_pong_confirms_what_was_written_before_its_ping() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut hb = Heartbeat::new(&cfg(30, 10, 3, true), t0);
        assert_eq!(hb.poll(t0 + s(30), 7), Tick::Ping);
        assert_eq!(
            hb.on_pong(t0 + s(31)),
            Pong {
                rtt: Some(s(1)),
                mark: Some(7),
                probe: true
            }
        );
        // Unsolicited: confirms nothing.
        assert_eq!(hb.on_pong(t0 + s(32)).mark, None);
        // A miss, then the late pong and the re-probe's: each confirms its own ping's mark.
        assert_eq!(hb.poll(t0 + s(61), 9), Tick::Ping);
        assert!(matches!(hb.poll(t0 + s(71), 12), Tick::Missed { .. }));
        assert_eq!(hb.on_pong(t0 + s(72)).mark, Some(9));
        assert_eq!(hb.on_pong(t0 + s(73)).mark, Some(12));
    }

    #[test]
    fn a_forgotten_ping_confirms_nothing_and_keeps_the_order() {
        // Eight misses allowed, re-probing: six pings outstanding, the ring holds four.
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut hb = Heartbeat::new(&cfg(30, 10, 8, true), t0);
        assert_eq!(hb.poll(t0 + s(30), 1), Tick::Ping);
        for (i, mark) in (2..=6).enumerate() {
            let at = t0 + s(40 + 10 * i as u64);
            assert!(matches!(hb.poll(at, mark), Tick::Missed { ping: true, .. }));
        }
        let marks: Vec<Option<u64>> = (0..7).map(|_| hb.on_pong(t0 + s(95)).mark).collect();
        // Pings 1 and 2 were forgotten: their pongs confirm nothing, and ping 3's pong is not
        // taken for ping 1's (no mark is ever credited to an earlier ping's pong).
        assert_eq!(
            marks,
            [None, None, Some(3), Some(4), Some(5), Some(6), None]
        );
    }

    #[test]
    fn pings_cleared_by_other_traffic_still_own_their_pongs() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut c = cfg(30, 10, 3, true);
        c.liveness = Liveness::AnyInbound;
        let mut hb = Heartbeat::new(&c, t0);
        assert_eq!(hb.poll(t0 + s(30), 4), Tick::Ping);
        hb.on_inbound(t0 + s(31)); // answers the ping as far as liveness goes
        assert_eq!(hb.poll(t0 + s(60), 8), Tick::Ping);
        // The first pong is the first ping's, whose record is gone: no mark, not 8.
        assert_eq!(hb.on_pong(t0 + s(61)).mark, None);
        assert_eq!(hb.on_pong(t0 + s(61)).mark, Some(8));
    }

    #[test]
    fn the_hosts_own_text_ping_takes_its_place_in_the_order() {
        // Host "ping" (mark 1), then our probe (mark 10): the first pong answers the host's
        // ping and confirms only message 1; the probe stays outstanding until the second.
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut hb = Heartbeat::new(&cfg(30, 10, 3, true), t0);
        assert_eq!(hb.extra_ping(t0 + s(29), 1), 1);
        assert_eq!(hb.poll(t0 + s(30), 10), Tick::Ping);
        assert_eq!(
            hb.on_pong(t0 + s(31)),
            Pong {
                rtt: None,
                mark: Some(1),
                probe: false
            }
        );
        assert!(matches!(hb.poll(t0 + s(40), 10), Tick::Missed { .. }));
        // Its pong was late: it answers the probe (mark 10), not the re-probe.
        assert_eq!(hb.on_pong(t0 + s(41)).mark, Some(10));
        // Probe first, host ping second: the probe's pong clears the outstanding probe.
        let mut hb = Heartbeat::new(&cfg(30, 10, 3, true), t0);
        assert_eq!(hb.poll(t0 + s(30), 3), Tick::Ping);
        hb.extra_ping(t0 + s(30), 4);
        assert!(hb.on_pong(t0 + s(31)).probe);
        assert_eq!(hb.poll(t0 + s(45), 4), Tick::Idle, "probe answered");
        assert_eq!(hb.on_pong(t0 + s(46)).mark, Some(4));
    }

    #[test]
    fn protocol_pongs_answer_by_number_and_unsolicited_ones_answer_nothing() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut hb = Heartbeat::new(&cfg(30, 10, 5, true), t0);
        assert_eq!(hb.poll(t0 + s(30), 2), Tick::Ping);
        assert_eq!(hb.last_ping(), 1);
        // Unsolicited (empty, foreign, or a number not sent yet): nothing, not even liveness.
        assert_eq!(hb.on_protocol_pong(t0 + s(31), b""), None);
        assert_eq!(hb.on_protocol_pong(t0 + s(31), b"hello"), None);
        assert_eq!(hb.on_protocol_pong(t0 + s(31), &2u64.to_be_bytes()), None);
        assert!(matches!(
            hb.poll(t0 + s(40), 3),
            Tick::Missed { missed: 1, .. }
        ));
        assert!(matches!(
            hb.poll(t0 + s(50), 5),
            Tick::Missed { missed: 2, .. }
        ));
        assert_eq!(hb.last_ping(), 3);
        // The peer answers only the latest (RFC 6455 5.5.3): all three are answered.
        let p = hb
            .on_protocol_pong(t0 + s(51), &3u64.to_be_bytes())
            .unwrap();
        assert_eq!((p.mark, p.rtt, p.probe), (Some(5), Some(s(1)), true));
        assert_eq!(hb.missed(), 0);
        // A repeat of an answered number answers nothing.
        assert_eq!(hb.on_protocol_pong(t0 + s(52), &3u64.to_be_bytes()), None);
        assert_eq!(hb.poll(t0 + s(60), 5), Tick::Idle);
        assert_eq!(hb.poll(t0 + s(81), 5), Tick::Ping);
    }

    #[test]
    fn write_progress_defers_the_pong_timeout_and_a_stall_still_ends_within_the_bound() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut hb = Heartbeat::new(&cfg(30, 10, 3, true), t0);
        let ping_at = hb.next_wakeup();
        assert_eq!(hb.poll(ping_at, 0), Tick::Ping);
        // Our backlog keeps draining for 25 s after the ping: no miss while it moves.
        let mut t = ping_at;
        for _ in 0..25 {
            t += Duration::from_secs(1);
            hb.on_progress(t);
            assert_eq!(hb.poll(t, 0), Tick::Idle, "at {:?}", t - t0);
        }
        let last_progress = t;
        // Then it stops: dead exactly max_missed x timeout after the last progress.
        let (dead_at, ticks) = run_silent(&mut hb, t0);
        assert_eq!(t0 + dead_at, last_progress + Duration::from_secs(3 * 10));
        // One wake-up re-reads the last progress; then two misses and the verdict.
        assert_eq!(ticks.len(), 1 + 3, "{ticks:?}");
        // Progress before the ping proves nothing about it.
        let mut hb = Heartbeat::new(&cfg(30, 10, 3, true), t0);
        hb.on_progress(t0 + ms(5));
        let (dead_at, _) = run_silent(&mut hb, t0);
        assert_eq!(dead_at, Duration::from_secs(60));
    }
}
