//! `astrtc bench calls`: how many simultaneous calls a running deployment carries, and what each
//! costs it. Calls are placed by [`crate::media`] from this one process on the caller's tokio
//! runtime (a task per call; the RTP of `sip-echo` calls on one port served by one more task,
//! [`crate::media::rtp::RtpPort`], and the WebRTC calls' on a few ports, one per core by
//! default, each served by one more task, [`crate::media::webrtc_port::WebrtcPort`], unless
//! asked otherwise), ramped up at a fixed rate so that setup storms do not dominate;
//! once every call of a level is up, a measurement window of `hold` seconds reads the CPU
//! counters (cgroups) of the deployment's services — one Asterisk container, or in a cluster
//! every pool member, the edge, the relay and the database — and this process's own
//! (`getrusage`), then every call hangs up at once.
//!
//! Owns: levels, ramp, the window, the figures of a level ([`LevelReport`]), per service
//! ([`Service`]) and summed over the Asterisk servers, and the capacity judgement
//! ([`Criteria`]). Must not: read the spec (the caller resolves addresses, accounts and the
//! counters), print (progress goes to a callback), or judge timing in tests — the figures are
//! measurements of a shared, noisy host.

pub mod cpu;
pub mod plot;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinSet;

use crate::media::answer::{AnswerFigures, AnsweringPhone};
use crate::media::rtp::{RtpError, RtpPort};
use crate::media::session::Offer;
use crate::media::webrtc_port::WebrtcPort;
use crate::media::{self, CallReport, CallSetup, LegSetup, SharedMedia};
use crate::spec::valid::Secret;
pub use cpu::CgroupCpu;

/// What kind of call a run places.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// WebRTC (WSS, ICE, DTLS-SRTP, opus) to the echo extension: no transcoding.
    WebrtcEcho,
    /// Plain SIP over UDP with G.711 to the echo extension.
    SipEcho,
    /// WebRTC opus to a plain SIP endpoint the bench registers and answers with G.711: Asterisk
    /// transcodes both ways on every call.
    WebrtcToSip,
}

impl Kind {
    /// The name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Kind::WebrtcEcho => "webrtc-echo",
            Kind::SipEcho => "sip-echo",
            Kind::WebrtcToSip => "webrtc-to-sip",
        }
    }

    /// Asterisk channels (each with its own RTP port pair) per call.
    pub fn channels_per_call(self) -> u32 {
        match self {
            Kind::WebrtcEcho | Kind::SipEcho => 1,
            Kind::WebrtcToSip => 2,
        }
    }

    /// File descriptors this process needs per call (WSS connection and media socket; the SIP
    /// socket: the calls share one RTP pair), beyond a fixed base.
    pub fn fds_per_call(self) -> u64 {
        match self {
            Kind::WebrtcEcho | Kind::WebrtcToSip => 2,
            Kind::SipEcho => 1,
        }
    }

    /// Whether calls of this kind use the WSS listener.
    pub fn uses_wss(self) -> bool {
        self != Kind::SipEcho
    }
}

/// Most calls a deployment's RTP range can carry at once for `kind`: Asterisk takes an even
/// port (and the odd one above it for RTCP, unused with rtcp-mux) per channel, so
/// `(end - start + 1) / 2` channels.
pub fn rtp_capacity(start: u16, end: u16, kind: Kind) -> u32 {
    let ports = u32::from(end.saturating_sub(start)) + 1;
    ports / 2 / kind.channels_per_call()
}

/// What a measured service does in the deployment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// An Asterisk server: the one of a single deployment, or a pool member of a cluster.
    Asterisk,
    /// The cluster's SIP edge (Kamailio).
    Edge,
    /// The cluster's media relay (rtpengine).
    Relay,
    /// The cluster's database (PostgreSQL).
    Database,
}

impl Role {
    /// The name in tables.
    pub fn name(self) -> &'static str {
        match self {
            Role::Asterisk => "asterisk",
            Role::Edge => "edge",
            Role::Relay => "relay",
            Role::Database => "database",
        }
    }
}

/// A service whose CPU a run reads.
#[derive(Debug, Clone)]
pub struct Counter {
    /// The service's name (compose service, e.g. `asterisk-1`, `edge`).
    pub name: String,
    /// What it does.
    pub role: Role,
    /// Its cgroup's counter.
    pub cpu: CgroupCpu,
    /// Where the counter is read (container and file), for the report.
    pub source: String,
}

/// A measured service, as the report lists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Service {
    /// The service's name.
    pub name: String,
    /// What it does.
    pub role: Role,
    /// Where its counter was read.
    pub source: String,
    /// Cores it kept busy idle, before the first level.
    pub idle_cores: Option<f64>,
}

/// An endpoint the bench calls as, or answers as.
#[derive(Debug, Clone)]
pub struct Account {
    /// Endpoint id.
    pub id: String,
    /// Its digest password.
    pub password: Secret,
}

/// Where the deployment is and who calls whom.
#[derive(Debug, Clone)]
pub struct Target {
    /// The WSS listener.
    pub wss: SocketAddr,
    /// The SIP UDP listener.
    pub sip: SocketAddr,
    /// SIP domain and TLS name.
    pub domain: String,
    /// CA the WSS certificate chains to.
    pub ca_pem: Arc<str>,
    /// The endpoint every call is placed as (WebRTC for the webrtc kinds, SIP for sip-echo).
    pub caller: Account,
    /// webrtc-to-sip: the plain SIP endpoint the bench registers and answers calls as.
    pub callee: Option<Account>,
    /// The echo extension.
    pub echo_extension: String,
    /// The address WebRTC calls offer as their one host candidate.
    pub local_ip: IpAddr,
}

/// What a run does.
#[derive(Debug, Clone)]
pub struct Options {
    /// The kind of call.
    pub kind: Kind,
    /// Concurrent calls per level, in the order run.
    pub levels: Vec<u32>,
    /// The measurement window, with every call of the level up.
    pub hold: Duration,
    /// New calls per second while a level ramps up.
    pub rate: f64,
    /// Wait after the last call was started before the window opens (its setup completes).
    pub settle: Duration,
    /// What a level must reach to count towards the capacity.
    pub criteria: Criteria,
    /// WebRTC kinds: how many UDP ports carry the calls' media, each served by a task of its own
    /// ([`crate::media::webrtc_port::WebrtcPort`]), the calls taking them in turn; 0: a socket and
    /// a task per call.
    pub webrtc_ports: usize,
}

/// When a level counts as carried.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Criteria {
    /// Calls set up, at least, in percent.
    pub min_setup_percent: f64,
    /// Loss below this, in percent.
    pub max_loss_percent: f64,
    /// p99 of the calls' jitter below this, in ms.
    pub max_jitter_p99_ms: f64,
}

impl Default for Criteria {
    fn default() -> Self {
        Criteria { min_setup_percent: 99.5, max_loss_percent: 1.0, max_jitter_p99_ms: 30.0 }
    }
}

/// Median and 99th percentile.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Percentiles {
    /// Median.
    pub p50: f64,
    /// 99th percentile.
    pub p99: f64,
}

impl Percentiles {
    /// Of `values` (nearest rank); `None` when empty.
    pub fn of(values: &mut [f64]) -> Option<Percentiles> {
        if values.is_empty() {
            return None;
        }
        values.sort_by(f64::total_cmp);
        let rank = |p: f64| values[(((p / 100.0) * values.len() as f64).ceil() as usize).clamp(1, values.len()) - 1];
        Some(Percentiles { p50: rank(50.0), p99: rank(99.0) })
    }
}

/// CPU used during a level's measurement window.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CpuFigures {
    /// CPU seconds used in the window.
    pub cpu_seconds: f64,
    /// CPU seconds per second of one call: `cpu_seconds / (window × calls up)`.
    pub per_call_second: f64,
    /// The same less what the process used idle, before the first level (what one more call
    /// costs; the idle share weighs on small levels only).
    pub over_idle_per_call_second: f64,
    /// Cores' worth busy on average during the window.
    pub cores: f64,
}

impl CpuFigures {
    /// The figures of `cpu` used in `window` by `calls` calls, over an idle use of `idle_cores`.
    pub fn new(cpu: Duration, window: Duration, calls: u32, idle_cores: f64) -> Option<CpuFigures> {
        let secs = window.as_secs_f64();
        let call_seconds = secs * f64::from(calls);
        (secs > 0.0 && calls > 0).then(|| CpuFigures {
            cpu_seconds: cpu.as_secs_f64(),
            per_call_second: cpu.as_secs_f64() / call_seconds,
            over_idle_per_call_second: (cpu.as_secs_f64() - idle_cores * secs).max(0.0) / call_seconds,
            cores: cpu.as_secs_f64() / secs,
        })
    }

    /// Calls one core carries at this cost (over idle).
    pub fn calls_per_core(&self) -> f64 {
        if self.over_idle_per_call_second > 0.0 {
            1.0 / self.over_idle_per_call_second
        } else {
            0.0
        }
    }
}

/// What one level measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LevelReport {
    /// Calls placed.
    pub calls: u32,
    /// Calls answered whose audio came back.
    pub set_up: u32,
    /// `set_up` in percent of `calls`.
    pub setup_percent: f64,
    /// First INVITE to the 200 OK, ms.
    pub answer_ms: Option<Percentiles>,
    /// First INVITE to the first audio back (ICE and DTLS included for WebRTC), ms.
    pub setup_ms: Option<Percentiles>,
    /// Audio lost, in percent of what the set-up calls sent from their first echo on.
    pub loss_percent: f64,
    /// Calls' jitter, ms: of the echo path (RFC 3550's estimator over round-trip times, see
    /// [`crate::media::stats::MediaFigures::path_jitter_ms`]) where packets are matched, else
    /// (a transcoded echo) of the received stream. The criterion is judged on this.
    pub jitter_ms: Option<Percentiles>,
    /// Calls' RFC 3550 interarrival jitter of the received stream, ms (includes this
    /// generator's own scheduling: frames it sent late arrive late).
    pub stream_jitter_ms: Option<Percentiles>,
    /// Calls' median round trip, ms (echo kinds; a transcoded echo has none).
    pub rtt_p50_ms: Option<Percentiles>,
    /// Codecs the calls sent, with counts.
    pub codecs: BTreeMap<String, u32>,
    /// Failed calls by cause.
    pub failures: BTreeMap<String, u32>,
    /// The first failed calls (at most [`FAILED_SAMPLES`]), with what tells where audio went.
    pub failed_calls: Vec<FailedCall>,
    /// The measurement window, s.
    pub window_s: f64,
    /// Asterisk's CPU in the window (its container's cgroup; in a cluster the sum over the pool
    /// members), when readable.
    pub asterisk_cpu: Option<CpuFigures>,
    /// Each measured service's CPU in the window, by name (as [`BenchReport::services`]).
    #[serde(default)]
    pub service_cpu: BTreeMap<String, CpuFigures>,
    /// Each measured service's CPU milliseconds per call placed, over its idle use, from the
    /// start of the ramp to the window's: setting the calls up, plus the media of those already
    /// up meanwhile. For an edge, whose work is signalling, this is its cost per call; its CPU
    /// in the window (no signalling then) is near nothing.
    #[serde(default)]
    pub service_setup_ms: BTreeMap<String, f64>,
    /// This process's CPU in the window.
    pub generator_cpu: Option<CpuFigures>,
    /// What the answering phone did (webrtc-to-sip).
    pub answered: Option<AnswerFigures>,
    /// Whether the level meets the criteria.
    pub carried: bool,
}

/// Failed calls kept per level, to tell where their audio went.
pub const FAILED_SAMPLES: usize = 10;

/// What one failed call saw: where the audio went missing follows from the counts — sent by us
/// vs put on the wire (SRTP datagrams), lost on the way to Asterisk (its RTCP reports), sent
/// back vs received and matched.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FailedCall {
    /// Why it failed.
    pub failure: String,
    /// Frames written.
    pub sent: u64,
    /// SRTP datagrams sent (WebRTC; RTCP included).
    pub srtp_out: Option<u64>,
    /// Loss Asterisk reported for our stream (its last RTCP receiver report), %.
    pub asterisk_loss_percent: Option<f64>,
    /// SRTP datagrams received (WebRTC; RTCP included).
    pub srtp_in: Option<u64>,
    /// RTP packets received.
    pub received: u64,
    /// Of them, matched to one sent.
    pub matched: u64,
    /// First audio back, ms after the INVITE.
    pub first_rtp_ms: Option<f64>,
}

/// A whole run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BenchReport {
    /// The kind of call.
    pub kind: Kind,
    /// Measurement window per level, s.
    pub hold_s: f64,
    /// Ramp rate, calls per second.
    pub rate: f64,
    /// What a level must reach.
    pub criteria: Criteria,
    /// CPUs this host has (the generator and Asterisk share them when both run here).
    pub host_cpus: usize,
    /// The shared UDP ports (each a task) opened for the calls' WebRTC media, counted as opened;
    /// 0: none (a socket and a task per call, or a kind without a WebRTC leg).
    #[serde(default)]
    pub webrtc_ports: usize,
    /// Where Asterisk's CPU was read, or why it was not.
    pub asterisk_cpu_source: String,
    /// Cores Asterisk (every Asterisk server) kept busy idle, before the first level.
    pub asterisk_idle_cores: Option<f64>,
    /// The services whose CPU was read: one Asterisk, or a cluster's pool members, edge, relay
    /// and database.
    #[serde(default)]
    pub services: Vec<Service>,
    /// The levels, in the order run.
    pub levels: Vec<LevelReport>,
    /// The largest level carried; `None` when none was.
    pub capacity: Option<u32>,
}

impl BenchReport {
    /// Asterisk's calls per core, from the CPU of the largest carried level (else the largest
    /// level with a figure).
    pub fn asterisk_calls_per_core(&self) -> Option<f64> {
        let carried = self.levels.iter().filter(|l| l.carried).filter_map(|l| l.asterisk_cpu).next_back();
        carried.or_else(|| self.levels.iter().filter_map(|l| l.asterisk_cpu).next_back()).map(|c| c.calls_per_core())
    }

    /// The level a service's figures are quoted at: the largest carried level with a figure for
    /// it, else the largest level with one.
    pub fn service_level(&self, name: &str) -> Option<&LevelReport> {
        let has = |l: &&LevelReport| l.service_cpu.contains_key(name);
        let carried = self.levels.iter().filter(|l| l.carried).rfind(has);
        carried.or_else(|| self.levels.iter().rfind(has))
    }
}

/// What a run tells its caller as it goes.
#[derive(Debug)]
pub enum Progress<'a> {
    /// A level starts ramping.
    Level {
        /// Concurrent calls.
        calls: u32,
    },
    /// All calls of the level are started; the window opens after the settle time.
    Ramped {
        /// Seconds the ramp took.
        seconds: f64,
    },
    /// A level is done.
    Done(&'a LevelReport),
}

/// Why a run could not go on.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// The shared media (DTLS certificate, tones) could not be made.
    #[error("failed to prepare the media")]
    Media(#[source] media::session::SessionError),
    /// The port the calls' media share could not be bound.
    #[error("failed to bind the media port of the calls")]
    RtpPort(#[source] RtpError),
    /// The answering phone of webrtc-to-sip could not register.
    #[error("failed to register endpoint {id} to answer the calls")]
    Answer {
        /// The endpoint.
        id: String,
        /// What failed.
        #[source]
        source: media::answer::AnswerError,
    },
}

/// Runs every level and judges the capacity. `counters` are the services whose CPU is read
/// (none: only this process's own is).
pub async fn run(
    options: &Options,
    target: &Target,
    counters: Vec<Counter>,
    progress: &(dyn Fn(Progress<'_>) + Sync),
) -> Result<BenchReport, BenchError> {
    let mut shared = SharedMedia::new().map_err(BenchError::Media)?;
    // sip-echo: every call's RTP on one port pair, served by one task (its future ends when the
    // last handle, `shared`'s, is dropped at the end of the run).
    if options.kind == Kind::SipEcho {
        let ip = media::netif::route_to(target.sip)
            .map_err(|e| BenchError::RtpPort(RtpError::Socket { addr: target.sip.ip(), source: e }))?;
        let (port, handle) = RtpPort::bind(ip).await.map_err(BenchError::RtpPort)?;
        tokio::spawn(port.run());
        shared.rtp_port = Some(handle);
    }
    // The WebRTC kinds: every call's media on one of the shared ports (its one host candidate),
    // each port a task of its own, so that the media can use as many cores as there are ports.
    if options.kind.uses_wss() {
        for _ in 0..options.webrtc_ports {
            let (port, handle) = WebrtcPort::bind(target.local_ip).map_err(BenchError::RtpPort)?;
            tokio::spawn(port.run());
            shared.webrtc_ports.push(handle);
        }
    }
    let asterisks: Vec<&Counter> = counters.iter().filter(|c| c.role == Role::Asterisk).collect();
    let source = match asterisks.as_slice() {
        [] => "not measured".to_string(),
        [one] => one.source.clone(),
        many => format!(
            "{} servers, summed: {}",
            many.len(),
            many.iter().map(|c| c.name.as_str()).collect::<Vec<_>>().join(", ")
        ),
    };
    // What each service uses with no call up (timers, healthchecks, probes), so a level's
    // figure can be told from it.
    let idle = if counters.is_empty() {
        Vec::new()
    } else {
        let (before, t0) = (read_all(&counters), Instant::now());
        tokio::time::sleep(options.settle).await;
        let secs = t0.elapsed().as_secs_f64();
        before
            .iter()
            .zip(read_all(&counters))
            .map(|(b, a)| b.zip(a).map(|(b, a)| a.saturating_sub(b).as_secs_f64() / secs))
            .collect()
    };
    let services: Vec<Service> = counters
        .iter()
        .enumerate()
        .map(|(i, c)| Service {
            name: c.name.clone(),
            role: c.role,
            source: c.source.clone(),
            idle_cores: idle.get(i).copied().flatten(),
        })
        .collect();
    let asterisk_idle = (!asterisks.is_empty())
        .then(|| services.iter().filter(|s| s.role == Role::Asterisk).map(|s| s.idle_cores).sum::<Option<f64>>())
        .flatten();
    let mut levels = Vec::new();
    for &calls in &options.levels {
        progress(Progress::Level { calls });
        let level = run_level(options, target, calls, &shared, &counters, &services, progress).await?;
        progress(Progress::Done(&level));
        levels.push(level);
        // Let Asterisk tear the channels down before the next level.
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let capacity = levels.iter().filter(|l| l.carried).map(|l| l.calls).max();
    Ok(BenchReport {
        kind: options.kind,
        hold_s: options.hold.as_secs_f64(),
        rate: options.rate,
        criteria: options.criteria,
        host_cpus: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        webrtc_ports: shared.webrtc_ports.len(),
        asterisk_cpu_source: source,
        asterisk_idle_cores: asterisk_idle,
        services,
        levels,
        capacity,
    })
}

/// Each service's CPU milliseconds per call placed between two readings `elapsed` apart, less
/// its idle use.
fn setup_figures(
    services: &[Service],
    before: &[Option<Duration>],
    after: &[Option<Duration>],
    elapsed: Duration,
    calls: u32,
) -> BTreeMap<String, f64> {
    let mut each = BTreeMap::new();
    if calls == 0 {
        return each;
    }
    for ((s, b), a) in services.iter().zip(before).zip(after) {
        if let Some(used) = b.zip(*a).map(|(b, a)| a.saturating_sub(b).as_secs_f64()) {
            let over_idle = (used - s.idle_cores.unwrap_or(0.0) * elapsed.as_secs_f64()).max(0.0);
            each.insert(s.name.clone(), over_idle * 1000.0 / f64::from(calls));
        }
    }
    each
}

fn read_all(counters: &[Counter]) -> Vec<Option<Duration>> {
    counters.iter().map(|c| c.cpu.read()).collect()
}

/// Each service's figures for a window, and the Asterisk servers' summed (when every one of
/// them was read).
fn service_figures(
    services: &[Service],
    before: &[Option<Duration>],
    after: &[Option<Duration>],
    window: Duration,
    calls: u32,
) -> (BTreeMap<String, CpuFigures>, Option<CpuFigures>) {
    let mut each = BTreeMap::new();
    let (mut sum, mut idle, mut asterisks, mut read) = (Duration::ZERO, 0.0, 0, 0);
    for ((s, b), a) in services.iter().zip(before).zip(after) {
        let used = b.zip(*a).map(|(b, a)| a.saturating_sub(b));
        if s.role == Role::Asterisk {
            asterisks += 1;
            if let Some(used) = used {
                read += 1;
                sum += used;
                idle += s.idle_cores.unwrap_or(0.0);
            }
        }
        if let Some(f) = used.and_then(|used| CpuFigures::new(used, window, calls, s.idle_cores.unwrap_or(0.0))) {
            each.insert(s.name.clone(), f);
        }
    }
    let asterisk = (asterisks > 0 && read == asterisks).then(|| CpuFigures::new(sum, window, calls, idle)).flatten();
    (each, asterisk)
}

fn call_setup(options: &Options, target: &Target, max_hold: Duration, release: watch::Receiver<bool>) -> CallSetup {
    let webrtc = || LegSetup::Webrtc {
        wss: target.wss,
        ca_pem: target.ca_pem.clone(),
        local_ips: vec![target.local_ip],
        relay: None,
    };
    let (leg, extension, reencoded) = match options.kind {
        Kind::WebrtcEcho => (webrtc(), target.echo_extension.clone(), false),
        Kind::SipEcho => (LegSetup::Sip { server: target.sip }, target.echo_extension.clone(), false),
        Kind::WebrtcToSip => {
            let callee = target.callee.as_ref().map(|c| c.id.clone()).unwrap_or_default();
            (webrtc(), callee, true)
        }
    };
    CallSetup {
        leg,
        domain: target.domain.clone(),
        user: target.caller.id.clone(),
        password: target.caller.password.expose().to_string(),
        extension,
        hold: max_hold,
        // Calls authenticate their INVITE; a REGISTER per call would only add load.
        register: false,
        offer: Offer::OpusThenPcmu,
        reencoded,
        release: Some(release),
    }
}

async fn run_level(
    options: &Options,
    target: &Target,
    calls: u32,
    shared: &SharedMedia,
    counters: &[Counter],
    services: &[Service],
    progress: &(dyn Fn(Progress<'_>) + Sync),
) -> Result<LevelReport, BenchError> {
    // webrtc-to-sip: the phone every call rings, registered afresh for each level.
    let answering = match (&target.callee, options.kind) {
        (Some(callee), Kind::WebrtcToSip) => {
            let phone = AnsweringPhone::register(target.sip, &callee.id, callee.password.expose(), &target.domain)
                .await
                .map_err(|source| BenchError::Answer { id: callee.id.clone(), source })?;
            let (stop, stopped) = oneshot::channel();
            Some((stop, tokio::spawn(phone.run(stopped))))
        }
        _ => None,
    };
    let ramp = Duration::from_secs_f64(f64::from(calls) / options.rate.max(0.1));
    // A call gives up on its own only long after the level should have ended.
    let max_hold = ramp + options.settle + options.hold + Duration::from_secs(60);
    let (release, released) = watch::channel(false);
    let setup = Arc::new(call_setup(options, target, max_hold, released));
    let mut tasks = JoinSet::new();
    let (r0, started) = (read_all(counters), Instant::now());
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / options.rate.max(0.1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    for _ in 0..calls {
        tick.tick().await;
        let (setup, shared) = (setup.clone(), shared.clone());
        tasks.spawn(async move { media::call(&setup, &shared).await });
    }
    progress(Progress::Ramped { seconds: started.elapsed().as_secs_f64() });
    tokio::time::sleep(options.settle).await;

    let (s0, g0, t0) = (read_all(counters), cpu::own_cpu(), Instant::now());
    let ramped = started.elapsed();
    tokio::time::sleep(options.hold).await;
    let (s1, g1, window) = (read_all(counters), cpu::own_cpu(), t0.elapsed());
    let _ = release.send(true);

    let mut reports = Vec::with_capacity(calls as usize);
    while let Some(r) = tasks.join_next().await {
        if let Ok(r) = r {
            reports.push(r);
        }
    }
    let answered = match answering {
        Some((stop, task)) => {
            let _ = stop.send(());
            task.await.ok().and_then(Result::ok)
        }
        None => None,
    };
    let mut level = figures(&reports, calls, options.kind == Kind::WebrtcToSip);
    level.window_s = window.as_secs_f64();
    (level.service_cpu, level.asterisk_cpu) = service_figures(services, &s0, &s1, window, level.set_up);
    level.service_setup_ms = setup_figures(services, &r0, &s0, ramped, calls);
    level.generator_cpu = CpuFigures::new(g1.saturating_sub(g0), window, level.set_up, 0.0);
    level.answered = answered;
    level.carried = carried(&level, &options.criteria);
    Ok(level)
}

/// Whether a level meets the criteria.
pub fn carried(level: &LevelReport, c: &Criteria) -> bool {
    level.setup_percent >= c.min_setup_percent
        && level.loss_percent < c.max_loss_percent
        && level.jitter_ms.is_some_and(|j| j.p99 < c.max_jitter_p99_ms)
}

/// A call counts as set up when it was answered and its audio came back.
fn set_up(r: &CallReport) -> bool {
    r.answered_ms.is_some() && r.first_rtp_ms.is_some()
}

/// The figures of a level from its calls' reports (CPU and the verdict are added by the caller).
pub fn figures(reports: &[CallReport], calls: u32, reencoded: bool) -> LevelReport {
    let up: Vec<&CallReport> = reports.iter().filter(|r| set_up(r)).collect();
    let n = up.len() as u32;
    let mut answer: Vec<f64> = up.iter().filter_map(|r| r.answered_ms).collect();
    let mut setup: Vec<f64> = up.iter().filter_map(|r| r.first_rtp_ms).collect();
    let media: Vec<_> = up.iter().filter_map(|r| r.media.as_ref()).collect();
    let mut jitter: Vec<f64> = media.iter().map(|m| m.path_jitter_ms.unwrap_or(m.jitter_ms)).collect();
    let mut stream_jitter: Vec<f64> = media.iter().map(|m| m.jitter_ms).collect();
    let mut rtt: Vec<f64> = media.iter().filter_map(|m| m.rtt_ms.map(|r| r.p50)).collect();
    // Loss weighted by packets: from the first echo on (matched), or counted when re-encoded.
    let (mut lost, mut sent) = (0.0, 0.0);
    for m in &media {
        let (share, base) = if reencoded {
            (m.counted_loss_percent, m.sent as f64)
        } else {
            (m.steady_loss_percent, m.sent.saturating_sub(m.sent_before_first_echo) as f64)
        };
        lost += share / 100.0 * base;
        sent += base;
    }
    let mut codecs = BTreeMap::new();
    for c in up.iter().filter_map(|r| r.codec.clone()) {
        *codecs.entry(c).or_insert(0) += 1;
    }
    let mut failures = BTreeMap::new();
    for r in reports {
        if let Some(f) = &r.failure {
            let cause = serde_json::to_value(f)
                .ok()
                .and_then(|v| v.get("cause").and_then(|c| c.as_str()).map(str::to_string))
                .unwrap_or_else(|| "unknown".into());
            *failures.entry(cause).or_insert(0) += 1;
        }
    }
    let failed_calls = reports
        .iter()
        .filter_map(|r| {
            let failure = r.failure.as_ref()?;
            let m = r.media.clone().unwrap_or_default();
            Some(FailedCall {
                failure: failure.to_string(),
                sent: m.sent,
                srtp_out: r.datagrams_out.map(|d| d.srtp),
                asterisk_loss_percent: r.asterisk_loss_percent,
                srtp_in: r.datagrams_in.map(|d| d.srtp),
                received: m.received,
                matched: m.matched,
                first_rtp_ms: r.first_rtp_ms,
            })
        })
        .take(FAILED_SAMPLES)
        .collect();
    let lost_calls = calls.saturating_sub(reports.len() as u32);
    if lost_calls > 0 {
        failures.insert("task_failed".into(), lost_calls);
    }
    LevelReport {
        calls,
        set_up: n,
        setup_percent: if calls == 0 { 0.0 } else { 100.0 * f64::from(n) / f64::from(calls) },
        answer_ms: Percentiles::of(&mut answer),
        setup_ms: Percentiles::of(&mut setup),
        loss_percent: if sent > 0.0 { 100.0 * lost / sent } else { 0.0 },
        jitter_ms: Percentiles::of(&mut jitter),
        stream_jitter_ms: Percentiles::of(&mut stream_jitter),
        rtt_p50_ms: Percentiles::of(&mut rtt),
        codecs,
        failures,
        failed_calls,
        window_s: 0.0,
        asterisk_cpu: None,
        service_cpu: BTreeMap::new(),
        service_setup_ms: BTreeMap::new(),
        generator_cpu: None,
        answered: None,
        carried: false,
    }
}

/// Raises this process's open-file limit to its hard limit; returns the soft limit now in force.
pub fn raise_fd_limit() -> u64 {
    // SAFETY: getrlimit/setrlimit read and write the struct we pass.
    unsafe {
        let mut lim: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 1024;
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit { rlim_cur: lim.rlim_max, rlim_max: lim.rlim_max };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                return raised.rlim_cur;
            }
        }
        lim.rlim_cur
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_accounts_debug_hides_its_password() {
        let a = Account { id: "3001".into(), password: Secret::new("pw-7f3a9c-not-in-debug") };
        assert!(!format!("{a:?}").contains("pw-7f3a9c"), "Account's Debug shows its password: {a:?}");
    }

    #[test]
    fn the_rtp_range_holds_one_channel_per_even_port() {
        assert_eq!(rtp_capacity(10000, 20000, Kind::WebrtcEcho), 5000);
        assert_eq!(rtp_capacity(10000, 20000, Kind::WebrtcToSip), 2500);
        assert_eq!(rtp_capacity(40000, 40099, Kind::SipEcho), 50);
        assert_eq!(rtp_capacity(40000, 40099, Kind::WebrtcToSip), 25);
    }

    #[test]
    fn percentiles_by_nearest_rank() {
        let mut v: Vec<f64> = (1..=100).rev().map(f64::from).collect();
        assert_eq!(Percentiles::of(&mut v), Some(Percentiles { p50: 50.0, p99: 99.0 }));
        assert_eq!(Percentiles::of(&mut []), None);
    }

    #[test]
    fn a_level_is_carried_only_when_every_criterion_holds() {
        let c = Criteria::default();
        let mut l = figures(&[], 0, false);
        l.setup_percent = 100.0;
        l.loss_percent = 0.2;
        l.jitter_ms = Some(Percentiles { p50: 1.0, p99: 5.0 });
        assert!(carried(&l, &c));
        assert!(!carried(&LevelReport { setup_percent: 99.0, ..l.clone() }, &c));
        assert!(!carried(&LevelReport { loss_percent: 1.0, ..l.clone() }, &c));
        assert!(!carried(&LevelReport { jitter_ms: Some(Percentiles { p50: 1.0, p99: 30.0 }), ..l.clone() }, &c));
        assert!(!carried(&LevelReport { jitter_ms: None, ..l }, &c));
    }

    #[test]
    fn cpu_per_call_second_and_calls_per_core() {
        let c = CpuFigures::new(Duration::from_secs(2), Duration::from_secs(10), 100, 0.0).unwrap();
        assert!((c.per_call_second - 0.002).abs() < 1e-12);
        assert!((c.calls_per_core() - 500.0).abs() < 1e-9);
        assert!((c.cores - 0.2).abs() < 1e-12);
        // 0.05 cores idle: 0.5 s of the 2 s were not the calls'.
        let c = CpuFigures::new(Duration::from_secs(2), Duration::from_secs(10), 100, 0.05).unwrap();
        assert!((c.over_idle_per_call_second - 0.0015).abs() < 1e-12);
        assert!(CpuFigures::new(Duration::from_secs(1), Duration::from_secs(10), 0, 0.0).is_none());
    }

    #[test]
    fn a_cluster_reports_each_service_and_sums_the_asterisk_servers() {
        let service =
            |name: &str, role, idle| Service { name: name.into(), role, source: String::new(), idle_cores: idle };
        let services = [
            service("asterisk-1", Role::Asterisk, Some(0.01)),
            service("asterisk-2", Role::Asterisk, Some(0.03)),
            service("edge", Role::Edge, Some(0.0)),
            service("db", Role::Database, None),
        ];
        let s = Duration::from_secs;
        let before = [Some(s(10)), Some(s(20)), Some(s(5)), None];
        let after = [Some(s(12)), Some(s(23)), Some(s(6)), Some(s(1))];
        let (each, asterisk) = service_figures(&services, &before, &after, s(10), 50);
        assert_eq!(each.keys().collect::<Vec<_>>(), ["asterisk-1", "asterisk-2", "edge"]);
        assert!((each["asterisk-1"].cpu_seconds - 2.0).abs() < 1e-12);
        assert!((each["edge"].per_call_second - 0.002).abs() < 1e-12);
        // The pool: 2 + 3 s over 10 s and 50 calls, less 0.04 cores idle.
        let a = asterisk.expect("every Asterisk server was read");
        assert!((a.cpu_seconds - 5.0).abs() < 1e-12);
        assert!((a.over_idle_per_call_second - (5.0 - 0.4) / 500.0).abs() < 1e-12);
        // Setup: 1 s of the edge's CPU over 4 s with 0.0 idle, for 50 calls: 20 ms a call.
        let setup = setup_figures(&services, &before, &after, s(4), 50);
        assert!((setup["edge"] - 20.0).abs() < 1e-9);
        assert!((setup["asterisk-2"] - (3.0 - 0.12) * 1000.0 / 50.0).abs() < 1e-9);
        assert!(!setup.contains_key("db"));
        // One pool member unread: no sum that would pass for the pool's.
        let (_, asterisk) = service_figures(&services, &[None, Some(s(20)), None, None], &after, s(10), 50);
        assert!(asterisk.is_none());
    }
}
