//! One UDP port that carries the media of many WebRTC calls, served by one future: the WebRTC
//! counterpart of [`super::rtp::RtpPort`]. str0m is sans-IO, so an `Rtc` does not care whose
//! socket its datagrams came through: every call offers the port's address as its one host
//! candidate, Asterisk gives each call's channel a port of its own, so a datagram's source tells
//! its call (Asterisk's candidate addresses from the answer; a source no answer named — a peer
//! reflexive address — goes to the call whose `Rtc::accepts` it, by ICE username for STUN, and is
//! remembered). One min-heap holds each call's next event (str0m's timeout, its next 20 ms frame,
//! its end), so hundreds of calls cost one task's wake-ups, not a task, a socket and timers each.
//! The port wakes when an event is due, at least every `READ_EVERY` (2 ms); reads what has arrived
//! with `recvmmsg` (each datagram at the kernel's arrival time, so a late read moves no round
//! trip) and sends everything the calls transmitted with `sendmmsg` ([`super::udp_batch`]).
//!
//! Owns: the socket, the demultiplexing and the schedule. The calls' media (ICE, DTLS, the tone,
//! the echo meter) stays the session's (its `Driver`): a call is handed over when it
//! runs and handed back as its report. Relayed calls (TURN) keep sockets of their own. Must not:
//! block (the socket is non-blocking and outside tokio's reactor), or panic on what arrives.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use str0m::net::{Protocol, Receive};
use str0m::{Input, RtcError};
use tokio::sync::{mpsc, oneshot};

use super::rtp::{enlarge_receive_buffer, RtpError, SHARED_BUFFER_BYTES};
use super::session::{Driver, WebrtcReport};
use super::udp_batch::{next_wake, stamp_arrivals, BatchReceiver, BatchSender};
use super::RunPlan;

/// Audio frame interval.
const FRAME: Duration = Duration::from_millis(20);

/// Longest a port with calls up leaves what arrived unread (datagrams keep the kernel's arrival
/// times, so this bounds only the wait of an ICE check's or DTLS record's answer).
const READ_EVERY: Duration = Duration::from_millis(2);

/// What a call asks of the port.
enum Command {
    /// Serve this call's media from now on; report on `report` when it ends.
    Start {
        id: u64,
        driver: Box<Driver>,
        connect_timeout: Duration,
        tail: Duration,
        report: oneshot::Sender<WebrtcReport>,
    },
    /// Stop sending; keep receiving for the call's tail, then report.
    Stop { id: u64 },
}

/// A handle on a [`WebrtcPort`]: what a call needs to use it. Cheap to clone.
#[derive(Clone)]
pub struct WebrtcPortHandle {
    local: SocketAddr,
    commands: mpsc::UnboundedSender<Command>,
    ids: Arc<AtomicU64>,
}

impl WebrtcPortHandle {
    /// The port's address (every call's host candidate).
    pub fn local(&self) -> SocketAddr {
        self.local
    }

    /// Hands `driver`'s call to the port until `plan.stop` fires (then its tail); its report.
    pub(crate) async fn serve(self, driver: Driver, mut plan: RunPlan) -> WebrtcReport {
        let fallback = driver.failed_report("the shared WebRTC port stopped serving the call");
        let id = self.ids.fetch_add(1, Ordering::Relaxed);
        let (report, reported) = oneshot::channel();
        let start = Command::Start {
            id,
            driver: Box::new(driver),
            connect_timeout: plan.connect_timeout,
            tail: plan.tail,
            report,
        };
        if self.commands.send(start).is_err() {
            return fallback;
        }
        tokio::pin!(reported);
        // This task sleeps until the call ends (or gives up on ICE and DTLS); the port does the media.
        tokio::select! {
            r = &mut reported => return r.unwrap_or(fallback),
            _ = &mut plan.stop => {}
        }
        let _ = self.commands.send(Command::Stop { id });
        reported.await.unwrap_or(fallback)
    }
}

/// One call on the port.
pub(crate) struct PortCall {
    driver: Box<Driver>,
    /// str0m's next timeout.
    rtc_timeout: Instant,
    /// The next audio frame, once the codec is known and until the call stops.
    next_frame: Option<Instant>,
    /// ICE and DTLS must be up by then.
    connect_deadline: Instant,
    tail: Duration,
    /// Set once stopped: when the call reports.
    end: Option<Instant>,
    /// The event queued for this call in the heap (an entry at another time is stale).
    scheduled: Option<Instant>,
    report: oneshot::Sender<WebrtcReport>,
}

impl PortCall {
    /// When the call next needs the port.
    fn wake(&self) -> Instant {
        let mut at = self.rtc_timeout;
        match self.end {
            Some(end) => at = at.min(end),
            None => {
                if let Some(frame) = self.next_frame {
                    at = at.min(frame);
                }
                if !self.driver.dtls_connected() {
                    at = at.min(self.connect_deadline);
                }
            }
        }
        at
    }

    /// Does what is due at `now`; `Some` when the call is over (with how it ended).
    fn step(&mut self, now: Instant, out: &mut BatchSender) -> Option<Result<(), RtcError>> {
        match self.end {
            Some(end) if now >= end => return Some(Ok(())),
            // ICE never declares failure: give up waiting for the media path.
            None if !self.driver.dtls_connected() && now >= self.connect_deadline => return Some(Ok(())),
            _ => {}
        }
        if now >= self.rtc_timeout {
            if let Err(e) = self.driver.on_timeout(now) {
                return Some(Err(e));
            }
        }
        if self.end.is_none() {
            // Every frame due is sent, late ones at once (as the call's own Burst interval did),
            // str0m drained after each.
            while let Some(at) = self.next_frame.filter(|at| *at <= now) {
                if let Err(e) = self.driver.send_frame().and_then(|()| self.drain(now, out)) {
                    return Some(Err(e));
                }
                self.next_frame = Some(at + FRAME);
            }
        }
        self.drain(now, out).err().map(Err)
    }

    /// Drains str0m's output; starts the audio once the codec is known.
    fn drain(&mut self, now: Instant, out: &mut BatchSender) -> Result<(), RtcError> {
        self.rtc_timeout = self.driver.drain_into(out)?;
        if self.driver.pick_codec() {
            self.next_frame = Some(now);
        }
        Ok(())
    }
}

/// A UDP port that carries the WebRTC media of any number of calls (see the module's header).
pub struct WebrtcPort {
    sock: UdpSocket,
    local: SocketAddr,
    commands: mpsc::UnboundedReceiver<Command>,
}

impl WebrtcPort {
    /// Binds a port on `ip`.
    pub fn bind(ip: IpAddr) -> Result<(WebrtcPort, WebrtcPortHandle), RtpError> {
        let err = |source| RtpError::Socket { addr: ip, source };
        let sock = UdpSocket::bind(SocketAddr::new(ip, 0)).map_err(err)?;
        sock.set_nonblocking(true).map_err(err)?;
        stamp_arrivals(&sock).map_err(err)?;
        enlarge_receive_buffer(&sock, SHARED_BUFFER_BYTES);
        let local = sock.local_addr().map_err(err)?;
        let (tx, commands) = mpsc::unbounded_channel();
        let handle = WebrtcPortHandle { local, commands: tx, ids: Arc::new(AtomicU64::new(0)) };
        Ok((WebrtcPort { sock, local, commands }, handle))
    }

    /// Serves the calls until every handle is dropped and the last call has reported.
    pub async fn run(mut self) {
        let mut calls: HashMap<u64, PortCall> = HashMap::new();
        let mut due: BinaryHeap<Reverse<(Instant, u64)>> = BinaryHeap::new();
        // Where each call's datagrams come from: Asterisk's candidates, then learnt sources.
        let mut by_source: HashMap<SocketAddr, u64> = HashMap::new();
        let (mut receiver, mut out) = (BatchReceiver::default(), BatchSender::default());
        let mut ended: Vec<(u64, Result<(), RtcError>)> = Vec::new();
        let mut open = true;
        let sleep = tokio::time::sleep_until(tokio::time::Instant::now());
        tokio::pin!(sleep);
        let local = self.local;
        loop {
            // What has arrived, each datagram at its arrival time, to its call.
            receiver.drain(&self.sock, |from, at, bytes| {
                let id = match by_source.get(&from) {
                    Some(id) => *id,
                    None => {
                        let Some(id) = stranger(&calls, from, local, at, bytes) else { return };
                        by_source.insert(from, id);
                        id
                    }
                };
                let Some(call) = calls.get_mut(&id) else { return };
                let now = Instant::now();
                let r = call.driver.on_receive(at, from, local, bytes).and_then(|()| call.drain(now, &mut out));
                match r {
                    Err(e) => ended.push((id, Err(e))),
                    Ok(()) => schedule(&mut due, id, call),
                }
            });
            // Each call's events due now.
            let now = Instant::now();
            let mut ready = Vec::new();
            while let Some(&Reverse((at, id))) = due.peek() {
                if at > now {
                    break;
                }
                due.pop();
                if let Some(call) = calls.get_mut(&id).filter(|c| c.scheduled == Some(at)) {
                    call.scheduled = None;
                    ready.push(id);
                }
            }
            for id in ready {
                let Some(call) = calls.get_mut(&id) else { continue };
                match call.step(now, &mut out) {
                    Some(result) => ended.push((id, result)),
                    None => schedule(&mut due, id, call),
                }
            }
            // Everything transmitted, in as few system calls as the batch allows.
            out.flush(&self.sock);
            for (id, result) in ended.drain(..) {
                if let Some(call) = calls.remove(&id) {
                    by_source.retain(|_, v| *v != id);
                    let _ = call.report.send(call.driver.finish(result));
                }
            }
            if !open && calls.is_empty() {
                return;
            }
            // Wake for the next event, and at least every READ_EVERY while calls are up.
            let wake = next_wake(due.peek().map(|Reverse((at, _))| *at), !calls.is_empty(), now, READ_EVERY);
            if let Some(at) = wake {
                sleep.as_mut().reset(tokio::time::Instant::from_std(at));
            }
            tokio::select! {
                c = self.commands.recv(), if open => match c {
                    Some(Command::Start { id, driver, connect_timeout, tail, report }) => {
                        let now = Instant::now();
                        for addr in driver.remote_addrs() {
                            by_source.insert(addr, id);
                        }
                        let call = PortCall {
                            driver,
                            rtc_timeout: now,
                            next_frame: None,
                            connect_deadline: now + connect_timeout,
                            tail,
                            end: None,
                            scheduled: None,
                            report,
                        };
                        let call = calls.entry(id).or_insert(call);
                        schedule(&mut due, id, call);
                    }
                    Some(Command::Stop { id }) => {
                        if let Some(call) = calls.get_mut(&id).filter(|c| c.end.is_none()) {
                            call.end = Some(Instant::now() + call.tail);
                            call.next_frame = None;
                            schedule(&mut due, id, call);
                        }
                    }
                    None => open = false,
                },
                _ = &mut sleep, if wake.is_some() => {}
            }
        }
    }
}

/// Queues the call's next event unless one as early is queued already.
fn schedule(due: &mut BinaryHeap<Reverse<(Instant, u64)>>, id: u64, call: &mut PortCall) {
    let at = call.wake();
    if call.scheduled.is_none_or(|s| at < s) {
        call.scheduled = Some(at);
        due.push(Reverse((at, id)));
    }
}

/// The call a datagram from a source no answer named belongs to: the one whose `Rtc` accepts
/// it (a STUN check by its ICE username; other datagrams from a pair ICE validated).
fn stranger(
    calls: &HashMap<u64, PortCall>,
    from: SocketAddr,
    local: SocketAddr,
    at: Instant,
    bytes: &[u8],
) -> Option<u64> {
    let contents = bytes.try_into().ok()?;
    let input = Input::Receive(at, Receive { proto: Protocol::Udp, source: from, destination: local, contents });
    calls.iter().find(|(_, c)| c.driver.accepts(&input)).map(|(id, _)| *id)
}
