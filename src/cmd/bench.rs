//! `astrtc bench calls`: resolve everything a run needs from the spec and the host (addresses,
//! accounts, the CA, the CPU counters — the Asterisk container's, or in a cluster each pool
//! member's, the edge's, the relay's and the database's — the file-descriptor limit), refuse
//! levels the deployment cannot hold before a single call is placed (bad input: exit 2), run
//! [`astrtc::bench`], then print the table and write the JSON and the plot.

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use astrtc::bench::{self, Account, CgroupCpu, Counter, Kind, Options, Role, Target};
use astrtc::cli::{BenchCallsArgs, BenchKind, BenchWebrtcMedia, RunningDeployment};
use astrtc::media::netif;
use astrtc::plan::{Endpoint, Plan};
use astrtc::spec::valid::Transport;
use astrtc::spec::EndpointKind;

use super::{load_plan, out_dir, CmdError};

/// Descriptors this process keeps besides the calls' own (runtime, stdio, the Docker socket).
const FD_BASE: u64 = 64;

fn kind(k: BenchKind) -> Kind {
    match k {
        BenchKind::WebrtcEcho => Kind::WebrtcEcho,
        BenchKind::SipEcho => Kind::SipEcho,
        BenchKind::WebrtcToSip => Kind::WebrtcToSip,
    }
}

/// The endpoint `id` names (of `want` kind), or the spec's first of that kind.
fn endpoint<'a>(plan: &'a Plan, id: Option<&str>, want: EndpointKind, flag: &str) -> Result<&'a Endpoint, CmdError> {
    let kind_name = match want {
        EndpointKind::Webrtc => "webrtc",
        EndpointKind::Sip => "sip",
    };
    match id {
        Some(id) => {
            let ep = plan.endpoints.iter().find(|e| e.id == id).ok_or_else(|| {
                let have: Vec<_> = plan.endpoints.iter().map(|e| e.id.as_str()).collect();
                CmdError::BadArgument(format!(
                    "{flag} {id}: the spec has no endpoint {id} (it has {})",
                    have.join(", ")
                ))
            })?;
            if ep.kind != want {
                return Err(CmdError::BadArgument(format!("{flag} {id}: endpoint {id} is not a {kind_name} endpoint")));
            }
            if ep.transport == Transport::Tls {
                return Err(CmdError::BadArgument(format!(
                    "{flag} {id}: endpoint {id} is a SIP phone over TLS; the bench's SIP legs are UDP only"
                )));
            }
            Ok(ep)
        }
        None => plan.endpoints.iter().find(|e| e.kind == want && e.transport != Transport::Tls).ok_or_else(|| {
            CmdError::BadArgument(format!(
                "this kind of call needs a {kind_name} endpoint{}, and the spec has none",
                if want == EndpointKind::Sip { " over UDP" } else { "" }
            ))
        }),
    }
}

/// Refuses levels the deployment or this process cannot hold.
fn check_levels(plan: &Plan, kind: Kind, levels: &[u32], fd_limit: u64) -> Result<(), CmdError> {
    let max = levels.iter().copied().max().unwrap_or(0);
    if plan.cluster.is_some() {
        // The relay: rtpengine opens a port pair on each side of every call (browser or phone,
        // and pool member).
        let ports = u32::from(plan.rtp.end - plan.rtp.start) + 1;
        let relay = ports / 4;
        if max > relay {
            return Err(CmdError::BadArgument(format!(
                "level {max} is more than the relay's media ports can carry: rtp.start-rtp.end = {}-{} is {ports} \
                 ports and rtpengine opens a pair on each side of every call, so at most {relay} calls; lower the \
                 level or widen the range in the spec",
                plan.rtp.start, plan.rtp.end,
            )));
        }
    }
    let rtp = bench::rtp_capacity(plan.rtp.start, plan.rtp.end, kind);
    if plan.cluster.is_none() && max > rtp {
        return Err(CmdError::BadArgument(format!(
            "level {max} is more than the deployment's RTP range can carry: rtp.start-rtp.end = {}-{} is {} ports, \
             an even one per Asterisk channel, {} channel{} per {} call, so at most {rtp} calls; lower the level or \
             widen the range in the spec",
            plan.rtp.start,
            plan.rtp.end,
            u32::from(plan.rtp.end - plan.rtp.start) + 1,
            kind.channels_per_call(),
            if kind.channels_per_call() == 1 { "" } else { "s" },
            kind.name(),
        )));
    }
    if plan.cluster.is_none() && kind.uses_wss() && max > plan.performance.wss_sessions {
        return Err(CmdError::BadArgument(format!(
            "level {max} is more than the deployment's WSS listener accepts: every WebRTC call keeps a WebSocket \
             open and performance.wss_sessions is {}; raise it in the spec (then render and restart Asterisk) or \
             lower the level",
            plan.performance.wss_sessions
        )));
    }
    let need = FD_BASE + u64::from(max) * kind.fds_per_call();
    if need > fd_limit {
        return Err(CmdError::BadArgument(format!(
            "level {max} needs about {need} open files here and this process may open {fd_limit} (ulimit -n, \
             hard limit included); raise the limit or lower the level"
        )));
    }
    Ok(())
}

/// A cluster's edge takes more than `cluster.flood_requests_per_second` requests a second from
/// one address for a flood (dropped over UDP, banned over WSS): the bench's calls come from one
/// address, at `rate` calls a second with four requests each (INVITE, the challenge's ACK, the
/// INVITE with credentials, ACK), and end with a BYE each at once. Unless that address is exempt
/// (loopback, `security.allow`), refuse what would measure the flood limit instead of the
/// deployment.
fn check_flood_limit(plan: &Plan, server: SocketAddr, rate: f64, levels: &[u32]) -> Result<(), CmdError> {
    let Some(cluster) = &plan.cluster else { return Ok(()) };
    let source = netif::route_to(server).unwrap_or(server.ip());
    if source.is_loopback() || plan.security.allow.iter().any(|net| in_network(source, net)) {
        return Ok(());
    }
    let limit = f64::from(cluster.flood_requests_per_second);
    let max = levels.iter().copied().max().unwrap_or(0);
    if rate * 4.0 > limit || f64::from(max) > limit * 2.0 {
        return Err(CmdError::BadArgument(format!(
            "the calls would come from {source}, which the edge's flood limit covers \
             (cluster.flood_requests_per_second = {limit}): --rate {rate} is about {} requests a second and a level \
             of {max} ends with {max} BYEs at once; run the bench on the edge's host with --host 127.0.0.1, or add \
             {source} to security.allow (then render and apply)",
            rate * 4.0
        )));
    }
    Ok(())
}

/// Whether `ip` is in `net` (`address/prefix`, as `security.allow` holds them once validated).
fn in_network(ip: IpAddr, net: &str) -> bool {
    let Some((addr, prefix)) = net.split_once('/') else { return false };
    let (Ok(addr), Ok(prefix)) = (addr.parse::<IpAddr>(), prefix.parse::<u32>()) else { return false };
    match (ip, addr) {
        (IpAddr::V4(ip), IpAddr::V4(net)) if prefix <= 32 => {
            let mask = u32::MAX.checked_shl(32 - prefix).unwrap_or(0);
            u32::from(ip) & mask == u32::from(net) & mask
        }
        (IpAddr::V6(ip), IpAddr::V6(net)) if prefix <= 128 => {
            let mask = u128::MAX.checked_shl(128 - prefix).unwrap_or(0);
            u128::from(ip) & mask == u128::from(net) & mask
        }
        _ => false,
    }
}

fn resolve(host: &str, port: u16) -> Result<SocketAddr, CmdError> {
    let addrs: Vec<SocketAddr> = (host, port)
        .to_socket_addrs()
        .map_err(|e| {
            CmdError::BadArgument(format!("cannot resolve {host}: {e}; pass the deployment's address with --host"))
        })?
        .collect();
    addrs.iter().find(|a| a.is_ipv4()).or(addrs.first()).copied().ok_or_else(|| {
        CmdError::BadArgument(format!("{host} has no address; pass the deployment's address with --host"))
    })
}

/// The one host candidate WebRTC calls offer: the address that routes to the server, or, for
/// a server on this host, a LAN address (Asterisk never offers loopback candidates).
fn local_ip(server: SocketAddr) -> IpAddr {
    let routed = netif::route_to(server).unwrap_or(IpAddr::from([127, 0, 0, 1]));
    if routed.is_loopback() {
        if let Some(lan) = netif::host_ips(netif::CandidateSet::Lan).ok().and_then(|ips| ips.into_iter().next()) {
            return lan;
        }
    }
    routed
}

/// The CPU counter of a container and a description of it, or why there is none. It is found
/// through the container's first process (the entrypoint; the daemon runs as its child in the
/// same cgroup), so it counts everything in the container.
async fn container_counter(docker: &bollard::Docker, id: &str) -> Result<(CgroupCpu, String), String> {
    let pid = docker
        .inspect_container(id, None)
        .await
        .map_err(|e| e.to_string())?
        .state
        .and_then(|s| s.pid)
        .filter(|p| *p > 0)
        .ok_or_else(|| format!("container {id} is not running"))?;
    let counter = CgroupCpu::of_pid(pid as u32)?;
    let short: String = id.chars().take(12).collect();
    let file = match &counter {
        CgroupCpu::V1(p) | CgroupCpu::V2(p) => p.display().to_string(),
    };
    Ok((counter, format!("container {short}: {file}")))
}

/// The services whose CPU a run reads: the one Asterisk container, or every service of a
/// cluster (each running pool member, the edge, the relay, the database), found by their compose
/// project and service labels. A cluster is measured whole or not at all: a missing service, or
/// a pool member that is not running, is an error, since a sum without it would pass for the
/// pool's.
async fn counters(plan: &Plan, container: Option<&str>) -> Result<Vec<Counter>, String> {
    if plan.cluster.is_none() {
        let (docker, id) = astrtc::verify::local_container(plan, container).await?;
        let (cpu, source) = container_counter(&docker, &id).await?;
        return Ok(vec![Counter { name: "asterisk".into(), role: Role::Asterisk, cpu, source }]);
    };
    let docker =
        astrtc::image::connect().await.map_err(|_| "no local Docker engine (remote deployment?)".to_string())?;
    let mut out = Vec::new();
    let members = astrtc::apply::cluster::pool_members(&docker, plan).await.map_err(|e| e.to_string())?;
    if members.is_empty() {
        return Err(format!("no member of the pool runs in compose project {:?}", plan.name));
    }
    for m in members {
        if m.state != "running" {
            return Err(format!(
                "pool member {} ({}) is {}: start it, or scale the pool to fewer",
                m.name, m.running.name, m.state
            ));
        }
        let (cpu, source) = container_counter(&docker, &m.running.id).await.map_err(|e| format!("{}: {e}", m.name))?;
        out.push(Counter { name: m.name, role: Role::Asterisk, cpu, source });
    }
    let services: [(String, Role); 3] =
        [("edge".into(), Role::Edge), ("relay".into(), Role::Relay), ("db".into(), Role::Database)];
    for (name, role) in services {
        let id = astrtc::verify::compose_container(&docker, &plan.name, &name)
            .await?
            .ok_or_else(|| format!("no running container of service {name} in compose project {:?}", plan.name))?;
        let (cpu, source) = container_counter(&docker, &id).await.map_err(|e| format!("{name}: {e}"))?;
        out.push(Counter { name, role, cpu, source });
    }
    Ok(out)
}

/// The most shared WebRTC ports a run opens (`--webrtc-ports` takes 1-64).
const MAX_WEBRTC_PORTS: usize = 64;

/// Runs `bench calls`.
pub async fn calls(args: BenchCallsArgs) -> Result<(), CmdError> {
    let RunningDeployment { spec, out, host, ca, container } = args.deployment;
    let plan = load_plan(&spec)?;
    let kind = kind(args.kind);
    if plan.cluster.is_some() {
        if kind == Kind::WebrtcToSip {
            return Err(CmdError::BadArgument(
                "--kind webrtc-to-sip: in a cluster a call from a browser to a SIP phone goes user → edge → user, \
                 relayed by rtpengine without Asterisk (and without transcoding: both sides agree on a codec), so it \
                 measures no Asterisk; use webrtc-echo or sip-echo, which the edge sends to the pool"
                    .into(),
            ));
        }
        if container.is_some() {
            return Err(CmdError::BadArgument(
                "--container names the one Asterisk of a single deployment; a cluster's services are found by their \
                 compose project (the spec's name)"
                    .into(),
            ));
        }
    }
    let webrtc_ports =
        match (args.webrtc_media, args.webrtc_ports) {
            (_, Some(_)) if !kind.uses_wss() => {
                return Err(CmdError::BadArgument(format!(
                    "--webrtc-ports is for the WebRTC kinds; a {} call has no WebRTC leg (its RTP shares one port)",
                    kind.name()
                )))
            }
            (BenchWebrtcMedia::PerCall, Some(_)) => return Err(CmdError::BadArgument(
                "--webrtc-ports counts shared ports, and --webrtc-media per-call gives each call sockets of its own: \
                 use one or the other"
                    .into(),
            )),
            (BenchWebrtcMedia::PerCall, None) => 0,
            (BenchWebrtcMedia::SharedPort, Some(n)) => n as usize,
            // One per core, within what --webrtc-ports takes.
            (BenchWebrtcMedia::SharedPort, None) => {
                std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1).min(MAX_WEBRTC_PORTS)
            }
        };
    let caller_kind = if kind == Kind::SipEcho { EndpointKind::Sip } else { EndpointKind::Webrtc };
    let caller = endpoint(&plan, args.caller.as_deref(), caller_kind, "--caller")?;
    let callee = match kind {
        Kind::WebrtcToSip => Some(endpoint(&plan, args.callee.as_deref(), EndpointKind::Sip, "--callee")?),
        _ => None,
    };
    let fd_limit = bench::raise_fd_limit();
    check_levels(&plan, kind, &args.levels, fd_limit)?;
    let ca_path = ca.unwrap_or_else(|| super::verify::default_ca(&plan, &out_dir(&spec, out)));
    let ca_pem =
        std::fs::read_to_string(&ca_path).map_err(|source| CmdError::ReadFile { path: ca_path.clone(), source })?;
    let host = host.unwrap_or_else(|| plan.tls.domain.clone());
    let wss = resolve(&host, plan.network.wss_port)?;
    check_flood_limit(&plan, wss, args.rate, &args.levels)?;
    let sip = resolve(&host, plan.network.sip_port)?;
    let account = |e: &Endpoint| Account { id: e.id.clone(), password: e.password.clone() };
    let target = Target {
        wss,
        sip,
        domain: plan.tls.domain.clone(),
        ca_pem: Arc::from(ca_pem.as_str()),
        caller: account(caller),
        callee: callee.map(account),
        echo_extension: plan.dialplan.echo_extension.clone(),
        local_ip: local_ip(wss),
    };
    let counters = match counters(&plan, container.as_deref()).await {
        Ok(c) => c,
        Err(why) => {
            eprintln!("warning: the deployment's CPU will not be measured: {why}");
            Vec::new()
        }
    };
    let options = Options {
        kind,
        levels: args.levels,
        hold: Duration::from_secs_f64(args.hold),
        rate: args.rate,
        settle: Duration::from_secs(3),
        criteria: bench::Criteria::default(),
        webrtc_ports,
    };
    crate::ui::bench_start(&options, &target, &counters);
    let report = bench::run(&options, &target, counters, &crate::ui::bench_progress).await?;
    print!("{}", crate::ui::bench_summary(&report));
    if let Some(path) = &args.json {
        write(path, &serde_json::to_string_pretty(&report).unwrap_or_default())?;
    }
    if let Some(path) = &args.plot {
        write(path, &bench::plot::svg(std::slice::from_ref(&report)))?;
    }
    if report.levels.iter().all(|l| l.set_up == 0) {
        return Err(CmdError::BenchNoCalls);
    }
    Ok(())
}

fn write(path: &Path, text: &str) -> Result<(), CmdError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|source| CmdError::WriteFile { path: path.to_path_buf(), source })?;
    }
    std::fs::write(path, text).map_err(|source| CmdError::WriteFile { path: path.to_path_buf(), source })
}

#[cfg(test)]
mod tests {
    use super::in_network;

    #[test]
    fn addresses_in_and_out_of_networks() {
        let ip = |s: &str| s.parse().unwrap();
        assert!(in_network(ip("192.0.2.7"), "192.0.2.0/24"));
        assert!(!in_network(ip("192.0.3.7"), "192.0.2.0/24"));
        assert!(in_network(ip("10.1.2.3"), "0.0.0.0/0"));
        assert!(in_network(ip("192.0.2.7"), "192.0.2.7/32"));
        assert!(in_network(ip("2001:db8::5"), "2001:db8::/32"));
        assert!(!in_network(ip("2001:db9::5"), "2001:db8::/32"));
        assert!(!in_network(ip("192.0.2.7"), "2001:db8::/32"));
        assert!(!in_network(ip("192.0.2.7"), "192.0.2.0"));
    }
}
