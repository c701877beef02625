//! Media measured against an echo. Each packet sent is remembered by a hash of its payload; the
//! echo carries the same payload back (Asterisk's `Echo()` passes frames through untouched when
//! both directions use the same codec), so a received payload is matched to the oldest unmatched
//! send with the same hash. From that: per-packet round-trip time and loss. RFC 3550
//! interarrival jitter and the echo's own sequence gaps are computed on the received stream.
//!
//! Owns: the arithmetic only — no clocks are read here (times are passed in), so it is cheap per
//! packet and exact in tests. Sends unanswered for [`STALE_AFTER`] are given up as lost, so a
//! looped payload ([`super::audio::ToneLoop`]) is never matched to its previous round.

use std::collections::{HashMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// A send still unanswered after this long is lost (the tone loop repeats after 10 s).
pub const STALE_AFTER: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Copy)]
struct Sent {
    at: Instant,
    index: u64,
}

/// RFC 3550 section 6.4.1 / A.8 interarrival jitter, in RTP timestamp units.
#[derive(Debug, Clone)]
pub struct Jitter {
    clock_rate: u32,
    origin: Option<Instant>,
    last_transit: Option<i64>,
    jitter: f64,
}

impl Jitter {
    /// A new estimator for a stream with this RTP clock rate.
    pub fn new(clock_rate: u32) -> Jitter {
        Jitter { clock_rate: clock_rate.max(1), origin: None, last_transit: None, jitter: 0.0 }
    }

    /// Feeds one packet: its arrival time and RTP timestamp.
    pub fn on_packet(&mut self, arrival: Instant, rtp_ts: u32) {
        let origin = *self.origin.get_or_insert(arrival);
        let arrival_units = (arrival.saturating_duration_since(origin)).as_secs_f64() * f64::from(self.clock_rate);
        let transit = arrival_units as i64 - i64::from(rtp_ts);
        if let Some(last) = self.last_transit {
            // Timestamps wrap at 2^32: reduce the difference to the nearest representative.
            let d = i64::from((transit.wrapping_sub(last)) as i32);
            self.jitter += ((d.unsigned_abs() as f64) - self.jitter) / 16.0;
        }
        self.last_transit = Some(transit);
    }

    /// The current estimate in milliseconds.
    pub fn millis(&self) -> f64 {
        self.jitter * 1000.0 / f64::from(self.clock_rate)
    }
}

/// Extended sequence numbers (RFC 3550 A.1, simplified: no probation) for received-side loss.
#[derive(Debug, Clone, Default)]
pub struct SeqTracker {
    first: Option<u64>,
    max: u64,
    received: u64,
}

impl SeqTracker {
    /// Feeds one sequence number.
    pub fn on_packet(&mut self, seq: u16) {
        self.received += 1;
        if self.first.is_none() {
            self.first = Some(u64::from(seq));
            self.max = u64::from(seq);
            return;
        }
        let cycles = self.max & !0xffff;
        let max16 = (self.max & 0xffff) as u16;
        if seq.wrapping_sub(max16) < 0x8000 {
            let ext = if seq < max16 { cycles + 0x1_0000 + u64::from(seq) } else { cycles + u64::from(seq) };
            self.max = self.max.max(ext);
        }
    }

    /// Packets expected from the first to the highest sequence number seen.
    pub fn expected(&self) -> u64 {
        self.first.map(|f| self.max - f + 1).unwrap_or(0)
    }

    /// Packets received.
    pub fn received(&self) -> u64 {
        self.received
    }
}

/// Round-trip time percentiles, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RttMillis {
    /// Minimum.
    pub min: f64,
    /// Median.
    pub p50: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Maximum.
    pub max: f64,
}

/// What a call's media measured.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct MediaFigures {
    /// Packets sent.
    pub sent: u64,
    /// Packets received (all, matched or not).
    pub received: u64,
    /// Received packets whose payload matched one sent.
    pub matched: u64,
    /// Sent packets never echoed, in percent of those sent.
    pub loss_percent: f64,
    /// Packets sent before the first one that came back (a NATed phone's first packets, sent
    /// while Asterisk still learns where to send: symmetric RTP).
    pub sent_before_first_echo: u64,
    /// Loss from the first echoed packet on, in percent: the path's own loss.
    pub steady_loss_percent: f64,
    /// Gaps in the echo's own sequence numbers, in percent.
    pub seq_gap_percent: f64,
    /// Loss counted rather than matched, in percent: packets sent from the first one received
    /// on, less those received. For a path that re-encodes the audio (a transcoded call), where
    /// no payload comes back as sent; packets in flight when the first arrived make it read a
    /// little low (about one packet per 20 ms of round trip).
    pub counted_loss_percent: f64,
    /// Round-trip time of matched packets.
    pub rtt_ms: Option<RttMillis>,
    /// RFC 3550 interarrival jitter of the received stream, ms.
    pub jitter_ms: f64,
    /// The same estimator over the round trip of matched packets (`D` = the difference of
    /// consecutive round-trip times), ms: the variation the path and the far end add, without
    /// the sender's own scheduling (a late frame sent late is not jitter of the path). `None`
    /// until two packets matched.
    pub path_jitter_ms: Option<f64>,
    /// When the first packet came back.
    #[serde(skip)]
    pub first_received: Option<Instant>,
}

/// Matches echoed packets to sent ones and keeps the figures.
#[derive(Debug)]
pub struct EchoMeter {
    pending: HashMap<u64, VecDeque<Sent>>,
    sent: u64,
    received: u64,
    matched: u64,
    rtts: Vec<Duration>,
    first_received: Option<Instant>,
    first_echoed: Option<u64>,
    sent_at_first_received: Option<u64>,
    jitter: Jitter,
    seq: SeqTracker,
    path_jitter: f64,
    last_rtt: Option<Duration>,
}

fn payload_key(payload: &[u8]) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    payload.hash(&mut h);
    h.finish()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

impl EchoMeter {
    /// A meter for a codec with this RTP clock rate.
    pub fn new(clock_rate: u32) -> EchoMeter {
        EchoMeter {
            pending: HashMap::new(),
            sent: 0,
            received: 0,
            matched: 0,
            rtts: Vec::new(),
            first_received: None,
            first_echoed: None,
            sent_at_first_received: None,
            jitter: Jitter::new(clock_rate),
            seq: SeqTracker::default(),
            path_jitter: 0.0,
            last_rtt: None,
        }
    }

    /// Packets received so far.
    pub fn received(&self) -> u64 {
        self.received
    }

    /// Packets sent so far.
    pub fn sent(&self) -> u64 {
        self.sent
    }

    /// Records a packet sent at `at`.
    pub fn on_sent(&mut self, payload: &[u8], at: Instant) {
        let index = self.sent;
        self.sent += 1;
        let queue = self.pending.entry(payload_key(payload)).or_default();
        while queue.front().is_some_and(|s| at.saturating_duration_since(s.at) >= STALE_AFTER) {
            queue.pop_front();
        }
        queue.push_back(Sent { at, index });
    }

    /// Records a packet received at `at`; returns its round-trip time when it matched one sent.
    pub fn on_received(&mut self, payload: &[u8], at: Instant, rtp_ts: u32, seq: u16) -> Option<Duration> {
        self.received += 1;
        self.first_received.get_or_insert(at);
        self.sent_at_first_received.get_or_insert(self.sent);
        self.jitter.on_packet(at, rtp_ts);
        self.seq.on_packet(seq);
        let key = payload_key(payload);
        let queue = self.pending.get_mut(&key)?;
        let sent = queue.pop_front()?;
        if queue.is_empty() {
            self.pending.remove(&key);
        }
        let rtt = at.saturating_duration_since(sent.at);
        if rtt >= STALE_AFTER {
            return None;
        }
        self.matched += 1;
        self.first_echoed.get_or_insert(sent.index);
        if let Some(last) = self.last_rtt {
            let d = rtt.abs_diff(last).as_secs_f64();
            self.path_jitter += (d - self.path_jitter) / 16.0;
        }
        self.last_rtt = Some(rtt);
        self.rtts.push(rtt);
        Some(rtt)
    }

    /// The figures so far.
    pub fn figures(&self) -> MediaFigures {
        let mut sorted = self.rtts.clone();
        sorted.sort();
        let expected = self.seq.expected();
        let percent = |part: u64, whole: u64| if whole == 0 { 0.0 } else { 100.0 * part as f64 / whole as f64 };
        MediaFigures {
            sent: self.sent,
            received: self.received,
            matched: self.matched,
            loss_percent: percent(self.sent.saturating_sub(self.matched), self.sent),
            sent_before_first_echo: self.first_echoed.unwrap_or(self.sent),
            steady_loss_percent: {
                let since = self.sent - self.first_echoed.unwrap_or(0);
                percent(since.saturating_sub(self.matched), since)
            },
            seq_gap_percent: percent(expected.saturating_sub(self.seq.received()), expected),
            counted_loss_percent: match self.sent_at_first_received {
                // The first packet back answers one sent before it: count it in.
                Some(at) => {
                    let since = self.sent - at + 1;
                    percent(since.saturating_sub(self.received), since)
                }
                None => percent(self.sent, self.sent),
            },
            rtt_ms: (!sorted.is_empty()).then(|| RttMillis {
                min: ms(sorted[0]),
                p50: ms(percentile(&sorted, 50.0)),
                p99: ms(percentile(&sorted, 99.0)),
                max: ms(sorted[sorted.len() - 1]),
            }),
            jitter_ms: self.jitter.millis(),
            path_jitter_ms: (self.matched >= 2).then_some(self.path_jitter * 1000.0),
            first_received: self.first_received,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_echo_and_computes_rtt_and_loss() {
        let t0 = Instant::now();
        let mut m = EchoMeter::new(8000);
        for i in 0..10u16 {
            m.on_sent(&[i as u8; 160], t0 + Duration::from_millis(20 * u64::from(i)));
        }
        for i in 0..9u16 {
            let at = t0 + Duration::from_millis(20 * u64::from(i) + 5);
            assert_eq!(
                m.on_received(&[i as u8; 160], at, 1000 + 160 * u32::from(i), 500 + i),
                Some(Duration::from_millis(5))
            );
        }
        let f = m.figures();
        assert_eq!((f.sent, f.matched), (10, 9));
        assert!((f.loss_percent - 10.0).abs() < 1e-9);
        assert_eq!((f.sent_before_first_echo, f.steady_loss_percent), (0, f.loss_percent));
        assert_eq!(f.rtt_ms.unwrap().p50, 5.0);
        assert!(f.jitter_ms < 0.01);
    }

    #[test]
    fn loss_is_counted_when_nothing_comes_back_as_it_was_sent() {
        // A transcoded path: 10 sent, the first 2 before anything came back, then 7 of the 8
        // sent since the first arrived (re-encoded: no payload matches).
        let t0 = Instant::now();
        let mut m = EchoMeter::new(8000);
        for i in 0..10u8 {
            let at = t0 + Duration::from_millis(20 * u64::from(i));
            m.on_sent(&[i], at);
            if (2..9).contains(&i) {
                assert_eq!(m.on_received(&[100 + i], at + Duration::from_millis(1), 0, u16::from(i)), None);
            }
        }
        let f = m.figures();
        assert_eq!((f.matched, f.received), (0, 7));
        assert!((f.counted_loss_percent - 12.5).abs() < 1e-9, "{}", f.counted_loss_percent);
    }

    #[test]
    fn a_payload_repeated_by_the_loop_is_not_matched_to_its_lost_previous_round() {
        let t0 = Instant::now();
        let mut m = EchoMeter::new(8000);
        m.on_sent(b"same", t0);
        // Lost; ten seconds later the loop sends the same payload again and it comes back.
        let again = t0 + Duration::from_secs(10);
        m.on_sent(b"same", again);
        assert_eq!(m.on_received(b"same", again + Duration::from_millis(3), 0, 0), Some(Duration::from_millis(3)));
        assert!((m.figures().loss_percent - 50.0).abs() < 1e-9);
    }

    #[test]
    fn path_jitter_ignores_a_late_sender_and_sees_a_varying_path() {
        // Sent in bursts (the sender stalled), each echoed 2 ms later: the received stream
        // jitters against its RTP clock, the path does not.
        let t0 = Instant::now();
        let mut m = EchoMeter::new(8000);
        for i in 0..100u32 {
            let sent = t0 + Duration::from_millis(u64::from(60 * (i / 3)));
            m.on_sent(&i.to_be_bytes(), sent);
            m.on_received(&i.to_be_bytes(), sent + Duration::from_millis(2), 160 * i, i as u16);
        }
        let f = m.figures();
        assert!(f.jitter_ms > 10.0, "{}", f.jitter_ms);
        assert!(f.path_jitter_ms.unwrap() < 0.001, "{:?}", f.path_jitter_ms);
        // A path alternating 1 and 11 ms: |D| = 10 ms, and the estimate converges to it.
        let mut m = EchoMeter::new(8000);
        for i in 0..300u32 {
            let sent = t0 + Duration::from_millis(u64::from(20 * i));
            m.on_sent(&i.to_be_bytes(), sent);
            let rtt = if i % 2 == 0 { 1 } else { 11 };
            m.on_received(&i.to_be_bytes(), sent + Duration::from_millis(rtt), 160 * i, i as u16);
        }
        assert!((m.figures().path_jitter_ms.unwrap() - 10.0).abs() < 0.1);
    }

    #[test]
    fn jitter_follows_rfc3550() {
        // Packets 20 ms apart in media time arriving alternately 0 and 10 ms late.
        let t0 = Instant::now();
        let mut j = Jitter::new(8000);
        for i in 0..200u32 {
            let late = if i % 2 == 0 { 0 } else { 10 };
            j.on_packet(t0 + Duration::from_millis(u64::from(20 * i + late)), 160 * i);
        }
        // |D| is always 80 units (10 ms): J converges to 80.
        assert!((j.millis() - 10.0).abs() < 0.1, "{}", j.millis());
    }

    #[test]
    fn sequence_numbers_wrap() {
        let mut s = SeqTracker::default();
        for seq in [65533u16, 65534, 65535, 0, 2] {
            s.on_packet(seq);
        }
        assert_eq!((s.expected(), s.received()), (6, 5));
    }

    #[test]
    fn packets_before_the_first_echo_are_counted_apart_from_the_paths_loss() {
        let t0 = Instant::now();
        let mut m = EchoMeter::new(8000);
        for i in 0..20u8 {
            m.on_sent(&[i], t0 + Duration::from_millis(20 * u64::from(i)));
        }
        // The first four never came back (sent while the far end learnt our address).
        for i in 4..20u8 {
            m.on_received(&[i], t0 + Duration::from_millis(20 * u64::from(i) + 2), 0, u16::from(i));
        }
        let f = m.figures();
        assert_eq!(f.sent_before_first_echo, 4);
        assert!((f.loss_percent - 20.0).abs() < 1e-9);
        assert_eq!(f.steady_loss_percent, 0.0);
    }
}
