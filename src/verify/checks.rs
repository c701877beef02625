//! `astrtc verify`: the guide's "check your configuration" section, automated, against any
//! running deployment of a spec — local or remote.
//!
//! Owns: the order of checks, which depend on which, and the remedies. Talks to the deployment
//! over the network (TLS, and WSS and SIP through [`crate::media`]'s user agent) and, when its
//! container is local, through the Docker API. With `--call`, the calls of [`super::call`] come
//! last, each skipped when a check of its transport failed.

use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

use bollard::exec::{CreateExecOptions, StartExecResults};
use bollard::query_parameters::ListContainersOptionsBuilder;
use futures_util::StreamExt;

use super::call::{self, CallOptions};
use super::cli_output::parse_dispatcher_list;
use super::report::{Check, Report, Status};
use super::{parse_endpoints, parse_module_show, tls, VerifyError};
use crate::media::probe::error_chain;
use crate::media::sip::{SipError, Transport, UserAgent};
use crate::media::ws::WsConn;
use crate::plan::Plan;
use crate::spec::EndpointKind;

/// Modules a WebRTC deployment must run.
pub const REQUIRED_MODULES: &[&str] = &[
    "res_crypto.so",
    "res_http_websocket.so",
    "res_pjsip_transport_websocket.so",
    "codec_opus_open_source.so",
    "res_format_attr_opus.so",
    "res_srtp.so",
];

/// A certificate with fewer days left than this fails the TLS check.
pub const MIN_DAYS_LEFT: i64 = 14;

/// Where and how to verify.
#[derive(Debug, Clone)]
pub struct Target {
    /// Host to connect to (the TLS name is always the spec's domain).
    pub host: String,
    /// CA certificate(s) the WSS certificate must chain to.
    pub ca_pem: String,
    /// Where `ca_pem` came from, for messages.
    pub ca_file: String,
    /// The Asterisk container, when local: a name or id; `None` finds it by compose labels.
    pub container: Option<String>,
    /// Calls to place after the checks (`--call`).
    pub call: Option<CallOptions>,
}

fn resolve(host: &str, port: u16) -> Result<SocketAddr, String> {
    let addrs: Vec<SocketAddr> = (host, port).to_socket_addrs().map_err(|e| e.to_string())?.collect();
    addrs.iter().find(|a| a.is_ipv4()).or(addrs.first()).copied().ok_or_else(|| "no address".into())
}

/// Runs every check against the deployment of `plan`.
pub async fn verify(plan: &Plan, target: &Target) -> Report {
    let mut report = Report::default();
    let domain = plan.tls.domain.clone();
    let wss = match resolve(&target.host, plan.network.wss_port) {
        Ok(a) => a,
        Err(e) => {
            report.push(Check::fail(
                "tls",
                format!("cannot resolve {}: {e}", target.host),
                "pass the deployment's address with --host",
            ));
            return report;
        }
    };

    // TLS, then everything that needs it.
    let (ca, dom) = (target.ca_pem.clone(), domain.clone());
    let tls_result = tokio::task::spawn_blocking(move || tls::check_tls(wss, &dom, &ca)).await.expect("join");
    let tls_ok = match tls_result {
        Ok(r) => {
            let days = r.leaf.seconds_left / 86400;
            let names: Vec<_> = r.leaf.dns_names.iter().cloned().collect();
            let detail = format!("{} on {wss}, certificate for {}, {days} days left", r.protocol, names.join(", "));
            if days < MIN_DAYS_LEFT {
                report.push(Check::fail(
                    "tls",
                    detail,
                    "the certificate expires soon: re-run `astrtc render` (self-signed) or renew it",
                ));
            } else {
                report.push(Check::pass("tls", detail));
            }
            true
        }
        Err(e) => {
            report.push(tls_failure(&e, wss, &domain, &target.ca_file));
            false
        }
    };

    if tls_ok {
        let ws_ok = match WsConn::connect(wss, &domain, &target.ca_pem, "/ws").await {
            Ok(conn) => {
                conn.close().await;
                report.push(Check::pass("websocket", "/ws upgraded (101) with subprotocol sip"));
                true
            }
            Err(e) => {
                report.push(Check::fail(
                    "websocket",
                    error_chain(&e),
                    "Asterisk must load res_http_websocket.so and res_pjsip_transport_websocket.so; check modules.conf",
                ));
                false
            }
        };
        for ep in plan.endpoints.iter().filter(|e| e.kind == EndpointKind::Webrtc) {
            let name = format!("register {}", ep.id);
            if !ws_ok {
                report.push(Check::skip(name, "the WebSocket upgrade failed"));
                continue;
            }
            report.push(register_check(name, wss, &domain, &target.ca_pem, &ep.id, ep.password.expose()).await);
        }
    } else {
        report.push(Check::skip("websocket", "TLS failed"));
        for ep in plan.endpoints.iter().filter(|e| e.kind == EndpointKind::Webrtc) {
            report.push(Check::skip(format!("register {}", ep.id), "TLS failed"));
        }
    }

    // SIP over UDP: answered where a phone uses it; otherwise bound to loopback only, so it must
    // answer there and nowhere else.
    let sip = resolve(&target.host, plan.network.sip_port);
    match &sip {
        Ok(addr) => {
            let public = plan.listeners.sip_udp_public || addr.ip().is_loopback();
            report.push(options_check(*addr, &domain, plan.network.sip_port, public).await)
        }
        Err(e) => report.push(Check::fail("sip udp", e.clone(), "pass the deployment's address with --host")),
    }

    // SIP over TLS, when a phone uses it: the same certificate checks as the WSS listener.
    if plan.listeners.sip_tls {
        match resolve(&target.host, plan.network.sip_tls_port) {
            Ok(addr) => {
                let (domain, ca) = (domain.clone(), target.ca_pem.clone());
                let r = tokio::task::spawn_blocking(move || tls::check_tls(addr, &domain, &ca)).await.expect("join");
                report.push(match r {
                    Ok(t) => {
                        Check::pass("sip tls", format!("{} on {addr}, certificate for {}", t.protocol, plan.tls.domain))
                    }
                    Err(e) => Check::fail(
                        "sip tls",
                        e.to_string(),
                        format!(
                            "is TCP port {} open, and does the certificate chain to {}?",
                            plan.network.sip_tls_port, target.ca_file
                        ),
                    ),
                });
            }
            Err(e) => report.push(Check::fail("sip tls", e, "pass the deployment's address with --host")),
        }
    }

    // Inside the containers, when they are local: a cluster's edge and database, or the one
    // Asterisk.
    if let Some(cluster) = &plan.cluster {
        for c in cluster_checks(plan, cluster).await {
            report.push(c);
        }
    } else {
        asterisk_checks(plan, target, &mut report).await;
    }

    if let (Some(options), Ok(sip)) = (&target.call, sip) {
        let endpoints = match call::select_endpoints(plan, &options.endpoints) {
            Ok(e) => e,
            Err(e) => {
                report.push(Check::fail("call", e, "pass an endpoint id of the spec with --endpoint"));
                return report;
            }
        };
        let failed = |name: &str| report.checks.iter().any(|c| c.name == name && c.status != Status::Pass);
        let (wss_down, sip_down) = (failed("tls") || failed("websocket"), failed("sip udp"));
        let skip = |kind| match kind {
            EndpointKind::Webrtc if wss_down => Some("the tls or websocket check failed".to_string()),
            EndpointKind::Sip if sip_down => Some("the sip udp check failed".to_string()),
            _ => None,
        };
        for c in call::call_checks(plan, &endpoints, options, wss, sip, &target.ca_pem, skip).await {
            report.push(c);
        }
    }
    report
}

/// REGISTER over WSS with digest auth, then the binding removed.
async fn register_check(name: String, wss: SocketAddr, domain: &str, ca_pem: &str, id: &str, password: &str) -> Check {
    let conn = match WsConn::connect(wss, domain, ca_pem, "/ws").await {
        Ok(c) => c,
        Err(e) => {
            return Check::fail(
                name,
                error_chain(&e),
                "the WSS connection failed before REGISTER; see the Asterisk log",
            )
        }
    };
    let mut ua = UserAgent::new(Transport::wss(conn), id, password, domain);
    let check = match ua.register(60).await {
        Ok(_) => {
            let removed = match ua.register(0).await {
                Ok(r) => format!("{} {}", r.code().unwrap_or_default(), r.reason()),
                Err(e) => e.to_string(),
            };
            Check::pass(name, format!("200 OK over WSS with digest auth; removed: {removed}"))
        }
        Err(SipError::AuthRejected { code, reason, .. } | SipError::Rejected { code: code @ 403, reason, .. }) => {
            Check::fail(
                name,
                format!("{code} {reason} after digest auth"),
                format!(
                    "wrong password for endpoint {id}: the deployment does not use the password in the secrets file; \
                     re-run `astrtc render` and restart Asterisk"
                ),
            )
        }
        Err(SipError::Rejected { code, reason, .. }) => Check::fail(
            name,
            format!("{code} {reason}"),
            format!("Asterisk does not know endpoint {id}: re-run `astrtc render` and restart"),
        ),
        Err(e) => Check::fail(name, error_chain(&e), "the WSS connection broke during REGISTER; see the Asterisk log"),
    };
    ua.close().await;
    check
}

/// SIP OPTIONS over UDP: any final answer proves Asterisk listens.
/// OPTIONS over UDP to `addr`: it must answer when `public` (a phone uses UDP, or `addr` is
/// loopback), and must not when no phone uses UDP (the listener is bound to loopback only).
async fn options_check(addr: SocketAddr, domain: &str, port: u16, public: bool) -> Check {
    let transport = match Transport::udp(addr).await {
        Ok(t) => t,
        Err(e) => return Check::fail("sip udp", error_chain(&e), "check the host's network"),
    };
    let mut ua = UserAgent::new(transport, "astrtc-verify", "", domain);
    ua.timeout = Duration::from_secs(3);
    match (ua.options(&format!("sip:{addr}")).await, public) {
        (Ok(resp), true) => Check::pass(
            "sip udp",
            format!("OPTIONS to {addr} answered {} {}", resp.code().unwrap_or_default(), resp.reason()),
        ),
        (Err(SipError::Timeout { .. }), true) => Check::fail(
            "sip udp",
            format!("no answer to OPTIONS on udp {addr} within 3 s"),
            format!("is Asterisk running and UDP port {port} open (firewall, published port)?"),
        ),
        (Err(SipError::Timeout { .. }), false) => {
            Check::pass("sip udp", format!("no UDP SIP listener on {addr} (no phone uses UDP; loopback only)"))
        }
        (Ok(resp), false) => Check::fail(
            "sip udp",
            format!(
                "OPTIONS to {addr} answered {} {}, but no phone uses UDP",
                resp.code().unwrap_or_default(),
                resp.reason()
            ),
            "the deployment runs configs older than the spec: render and restart it",
        ),
        (Err(e), _) => Check::fail("sip udp", error_chain(&e), "check the host's network"),
    }
}

fn tls_failure(e: &VerifyError, addr: SocketAddr, domain: &str, ca_file: &str) -> Check {
    let detail = e.to_string();
    let remedy = match e {
        VerifyError::Connect { .. } => format!(
            "nothing accepts connections on {addr}: is the stack running (`docker compose ps`), and is network.wss_port \
             {} open?",
            addr.port()
        ),
        VerifyError::Tls { source, .. } => {
            let msg = source.to_string();
            if let Some(idx) = msg.find("certificate is only valid for") {
                let presented = msg[idx + "certificate is only valid for".len()..].trim().to_string();
                format!(
                    "the certificate is for {presented}, the spec says {domain}: re-run `astrtc render` (self-signed) \
                     or `astrtc certs issue`, then restart Asterisk"
                )
            } else if msg.contains("UnknownIssuer") || msg.contains("unknown issuer") {
                format!("the certificate does not chain to {ca_file}: re-run `astrtc render`, or pass the right CA with --ca")
            } else if msg.contains("Expired") || msg.contains("expired") {
                "the certificate has expired: re-run `astrtc render` or renew it".to_string()
            } else {
                "see the Asterisk log (`docker compose logs asterisk`) for the TLS error".to_string()
            }
        }
        _ => "check the CA file and the spec's tls.domain".to_string(),
    };
    Check::fail("tls", detail, remedy)
}

/// The deployment's Asterisk container on this host's Docker engine: `explicit` (a name or id), else
/// the one its compose project or `astrtc testenv` labelled.
pub async fn local_container(plan: &Plan, explicit: Option<&str>) -> Result<(bollard::Docker, String), String> {
    let docker =
        crate::image::connect().await.map_err(|_| "no local Docker engine (remote deployment?)".to_string())?;
    if let Some(id) = explicit {
        return Ok((docker, id.to_string()));
    }
    // A compose deployment (labels of its project and service), else a container astrtc itself
    // started for this deployment (`astrtc testenv`).
    if let Some(id) = compose_container(&docker, &plan.name, "asterisk").await? {
        return Ok((docker, id));
    }
    let labels = vec![format!("{}={}", crate::testenv::DEPLOYMENT_LABEL, plan.name)];
    let filters = std::collections::HashMap::from([("label".to_string(), labels)]);
    let list = docker
        .list_containers(Some(ListContainersOptionsBuilder::default().filters(&filters).build()))
        .await
        .map_err(|e| e.to_string())?;
    if let Some(id) = list.first().and_then(|c| c.id.clone()) {
        return Ok((docker, id));
    }
    Err(format!("no running container of deployment {:?} here (pass --container for others)", plan.name))
}

/// The one Asterisk's modules and endpoints, through its container.
async fn asterisk_checks(plan: &Plan, target: &Target, report: &mut Report) {
    match local_container(plan, target.container.as_deref()).await {
        Err(why) => {
            report.push(Check::skip("modules", why.clone()));
            report.push(Check::skip("endpoints", why));
        }
        Ok((docker, id)) => {
            let mut rows = Vec::new();
            for pattern in ["crypto", "websocket", "opus", "srtp"] {
                if let Ok(out) = asterisk_rx(&docker, &id, &format!("module show like {pattern}")).await {
                    rows.extend(parse_module_show(&out));
                }
            }
            for m in REQUIRED_MODULES {
                let name = format!("module {m}");
                report.push(match rows.iter().find(|r| r.name == *m) {
                    Some(r) if r.status == "Running" => Check::pass(name, "Running"),
                    Some(r) => Check::fail(name, r.status.clone(), format!("{m} is loaded but not running; see the Asterisk log")),
                    None => Check::fail(
                        name,
                        "not loaded",
                        format!("{m} is not running: remove any `noload = {m}` from modules.conf, or rebuild the image with `astrtc build`"),
                    ),
                });
            }
            match asterisk_rx(&docker, &id, "pjsip show endpoints").await {
                Ok(out) => {
                    let mut have = parse_endpoints(&out);
                    have.sort();
                    let mut want: Vec<_> = plan.endpoints.iter().map(|e| e.id.clone()).collect();
                    want.sort();
                    report.push(if have == want {
                        Check::pass("endpoints", format!("{} as in the spec", have.join(", ")))
                    } else {
                        Check::fail(
                            "endpoints",
                            format!("Asterisk has [{}], the spec has [{}]", have.join(", "), want.join(", ")),
                            "re-run `astrtc render` and restart Asterisk",
                        )
                    });
                }
                Err(e) => report.push(Check::fail("endpoints", e, "is Asterisk running in the container?")),
            }
        }
    }
}

/// What a pool member must run: SIP (PJSIP), RTP, and opus for what Asterisk plays or records
/// on a browser's call (the relay hands the pool the browser's opus as plain RTP). No DTLS, no
/// WebSocket: the edge and the relay do those.
pub const POOL_MODULES: &[&str] =
    &["res_pjsip.so", "chan_pjsip.so", "res_rtp_asterisk.so", "codec_opus_open_source.so", "res_format_attr_opus.so"];

/// Each pool member's modules ([`POOL_MODULES`]), through its container: one check per member
/// (failed for one that is not running).
async fn pool_module_checks(docker: &bollard::Docker, members: &[crate::apply::cluster::Member]) -> Vec<Check> {
    let mut checks = Vec::new();
    for m in members {
        let name = format!("modules {}", m.name);
        if m.state != "running" {
            checks.push(not_running(name, m));
            continue;
        }
        let id = m.running.id.clone();
        let mut rows = Vec::new();
        let mut errors = Vec::new();
        for pattern in ["pjsip", "rtp_asterisk", "opus"] {
            match asterisk_rx(docker, &id, &format!("module show like {pattern}")).await {
                Ok(out) => rows.extend(parse_module_show(&out)),
                Err(e) => errors.push(e),
            }
        }
        if !errors.is_empty() {
            checks.push(Check::fail(name, errors.join("; "), format!("is Asterisk running in {}?", m.name)));
            continue;
        }
        let wrong: Vec<String> = POOL_MODULES
            .iter()
            .filter_map(|want| match rows.iter().find(|r| r.name == *want) {
                Some(r) if r.status == "Running" => None,
                Some(r) => Some(format!("{want} {}", r.status)),
                None => Some(format!("{want} not loaded")),
            })
            .collect();
        checks.push(if wrong.is_empty() {
            Check::pass(name, format!("{} running", POOL_MODULES.join(", ")))
        } else {
            Check::fail(
                name,
                wrong.join(", "),
                format!(
                    "see `docker logs {}`; remove any `noload` of them from modules.conf, or rebuild the image with \
                     `astrtc build`",
                    m.running.name
                ),
            )
        });
    }
    checks
}

/// A cluster's own checks, through the edge's, the members' and the database's containers: each
/// pool member active in the edge's dispatcher (it answers the edge's OPTIONS probes) and running
/// [`POOL_MODULES`], and the edge's users
/// in the database those of the spec.
async fn cluster_checks(plan: &Plan, cluster: &crate::spec::valid::Cluster) -> Vec<Check> {
    let mut checks = Vec::new();
    let Ok(docker) = crate::image::connect().await else {
        let why = "no local Docker engine (remote deployment?)";
        return vec![Check::skip("pool", why), Check::skip("users", why)];
    };
    let find = |service: &'static str| {
        let docker = docker.clone();
        async move {
            match compose_container(&docker, &plan.name, service).await {
                Ok(Some(id)) => Ok(id),
                Ok(None) => {
                    Err(format!("no running container of service {service} in compose project {:?}", plan.name))
                }
                Err(e) => Err(e),
            }
        }
    };
    let members = match crate::apply::cluster::pool_members(&docker, plan).await {
        Ok(m) => m,
        Err(e) => {
            checks.push(Check::fail("pool", e.to_string(), "is the Docker engine running?"));
            Vec::new()
        }
    };
    match find("edge").await {
        Err(why) => checks.push(Check::fail("pool", why, "start the cluster: docker compose up -d --wait")),
        Ok(edge) => {
            let cmd = vec!["kamcmd", "-s", "unix:/run/kamailio/kamailio_ctl", "dispatcher.list"];
            match exec_checked(&docker, &edge, cmd).await {
                Err(e) if !e.contains("No Destination Sets") => {
                    checks.push(Check::fail("pool", e, "is Kamailio running in the edge container?"))
                }
                result => {
                    let flags = result.map(|out| parse_dispatcher_list(&out)).unwrap_or_default();
                    checks.push(pool_size_check(&members, cluster.pool_size));
                    for m in &members {
                        checks.push(member_check(m, &flags));
                    }
                    checks.extend(strangers_check(&members, &flags));
                }
            }
        }
    }
    checks.extend(pool_module_checks(&docker, &members).await);
    match find("db").await {
        Err(why) => checks.push(Check::fail("users", why, "start the cluster: docker compose up -d --wait")),
        Ok(db) => {
            // Each user's digest (its password for the realm), max_contacts and transport, as the
            // edge reads them: a password changed in the spec but never applied shows here.
            use crate::render::cluster::{USER_ROW, USER_ROWS_FROM};
            let query = format!("SELECT {USER_ROW} {USER_ROWS_FROM}");
            let cmd = vec!["psql", "--no-psqlrc", "-U", "postgres", "-d", "kamailio", "-tAc", query.as_str()];
            match exec_checked(&docker, &db, cmd).await {
                Err(e) => checks.push(Check::fail("users", e, "is PostgreSQL running in the db container?")),
                Ok(out) => checks.push(users_check(plan, &out)),
            }
        }
    }
    checks
}

/// The edge's users (`username ha1 max_contacts transport` lines, by name) against the spec's
/// endpoints.
fn users_check(plan: &Plan, rows: &str) -> Check {
    let have: Vec<&str> = rows.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    let mut want: Vec<(String, String)> =
        plan.endpoints.iter().map(|e| (e.id.clone(), crate::render::cluster::user_row(plan, e))).collect();
    want.sort();
    let names = |rows: &[&str]| rows.iter().filter_map(|r| r.split(' ').next()).collect::<Vec<_>>().join(", ");
    let want_rows: Vec<&str> = want.iter().map(|(_, r)| r.as_str()).collect();
    if have == want_rows {
        return Check::pass("users", format!("{} in the edge's database, as in the spec", names(&have)));
    }
    let wrong: Vec<&str> = want
        .iter()
        .filter(|(id, row)| have.iter().any(|h| h.split(' ').next() == Some(id.as_str()) && h != row))
        .map(|(id, _)| id.as_str())
        .collect();
    let detail = if names(&have) != names(&want_rows) {
        format!("the edge's database has [{}], the spec has [{}]", names(&have), names(&want_rows))
    } else {
        format!("the edge's database has another password, max_contacts or transport for {}", wrong.join(", "))
    };
    Check::fail("users", detail, "re-run `astrtc render`, then `astrtc apply`")
}

/// How many members run: none fails (the edge has nowhere to send a call); another number than
/// the spec's passes and says so (`docker compose up --scale asterisk=N` runs N; `astrtc apply`
/// scales back to the spec's).
fn pool_size_check(members: &[crate::apply::cluster::Member], pool_size: u32) -> Check {
    let running = members.iter().filter(|m| m.state == "running").count();
    let detail = format!("{running} of the pool's service's replicas run (the spec's pool_size is {pool_size})");
    if running == 0 {
        Check::fail("pool", detail, "start the pool: docker compose up -d --wait")
    } else {
        Check::pass("pool", detail)
    }
}

/// A failed check for a pool member that is not running.
fn not_running(name: String, m: &crate::apply::cluster::Member) -> Check {
    let state = if m.state.is_empty() { "not running" } else { m.state.as_str() };
    Check::fail(
        name,
        format!("its container {} is {state}", m.running.name),
        format!("see `docker logs {}`; start it: docker compose up -d --wait", m.running.name),
    )
}

/// A pool member's state in the edge's dispatcher.
fn member_check(m: &crate::apply::cluster::Member, flags: &[(String, String)]) -> Check {
    let name = format!("pool {}", m.name);
    let Some(address) = m.address.filter(|_| m.state == "running") else {
        return Check::fail(
            name,
            format!(
                "its container {} is {}",
                m.running.name,
                if m.state.is_empty() { "not running" } else { &m.state }
            ),
            format!("see `docker logs {}`; start it: docker compose up -d --wait", m.running.name),
        );
    };
    let want = format!("sip:{address}:");
    match flags.iter().find(|(uri, _)| uri.starts_with(&want)) {
        Some((uri, f)) if f.starts_with('A') => {
            Check::pass(name, format!("{uri} active in the edge's dispatcher ({f})"))
        }
        Some((uri, f)) => Check::fail(
            name,
            format!(
                "{uri} is not active in the edge's dispatcher ({f}): it does not answer the edge's OPTIONS probes \
                 with 2xx, or it drains"
            ),
            format!("see `docker logs {}`; a member that drains answers 503 until it stops", m.running.name),
        ),
        None => Check::fail(
            name,
            format!("the edge's dispatcher has no destination at {address}"),
            "the pool watcher adds a running member within 5 s: see `docker compose logs pool-watch`",
        ),
    }
}

/// Destinations in the edge's dispatcher that are no running member (one stopped or removed that
/// the pool watcher has not taken out): one failed check naming them, or none.
fn strangers_check(members: &[crate::apply::cluster::Member], flags: &[(String, String)]) -> Option<Check> {
    let uris: Vec<String> = members.iter().filter_map(|m| Some(format!("sip:{}:", m.address?))).collect();
    let strangers: Vec<&str> =
        flags.iter().filter(|(uri, _)| !uris.iter().any(|u| uri.starts_with(u))).map(|(uri, _)| uri.as_str()).collect();
    (!strangers.is_empty()).then(|| {
        Check::fail(
            "pool",
            format!("the edge's dispatcher still sends calls to {}, which is no running member", strangers.join(", ")),
            "the pool watcher takes a member out within 5 s of its stop: see `docker compose logs pool-watch`",
        )
    })
}

/// The running container of compose service `service` in project `project`, if there is one.
pub async fn compose_container(
    docker: &bollard::Docker,
    project: &str,
    service: &str,
) -> Result<Option<String>, String> {
    let labels = vec![format!("com.docker.compose.project={project}"), format!("com.docker.compose.service={service}")];
    let filters = std::collections::HashMap::from([("label".to_string(), labels)]);
    let list = docker
        .list_containers(Some(ListContainersOptionsBuilder::default().filters(&filters).build()))
        .await
        .map_err(|e| e.to_string())?;
    Ok(list.first().and_then(|c| c.id.clone()))
}

/// Runs an Asterisk CLI command (`asterisk -rx COMMAND`) in a container through the Docker API
/// and returns what it printed.
pub async fn asterisk_rx(docker: &bollard::Docker, id: &str, command: &str) -> Result<String, String> {
    exec(docker, id, vec!["/usr/sbin/asterisk", "-rx", command]).await
}

/// [`exec`] for a cluster's checks: at most 10 s, and a command that exits non-zero is an error
/// with what it printed (a failed `kamcmd` or `psql` is never read as an empty answer).
async fn exec_checked(docker: &bollard::Docker, id: &str, cmd: Vec<&str>) -> Result<String, String> {
    let name = cmd.first().copied().unwrap_or_default().to_string();
    match tokio::time::timeout(Duration::from_secs(10), exec_with_code(docker, id, cmd)).await {
        Err(_) => Err(format!("{name} did not finish in 10 s")),
        Ok(Err(e)) => Err(e),
        Ok(Ok((out, Some(0)))) => Ok(out),
        Ok(Ok((out, code))) => {
            Err(format!("{name} exited {}: {}", code.map_or("?".into(), |c| c.to_string()), out.trim()))
        }
    }
}

/// Runs a command in a container through the Docker API and returns what it printed (stdout
/// and stderr).
async fn exec(docker: &bollard::Docker, id: &str, cmd: Vec<&str>) -> Result<String, String> {
    exec_with_code(docker, id, cmd).await.map(|(out, _)| out)
}

/// Runs a command in a container: what it printed (stdout and stderr) and its exit code.
async fn exec_with_code(docker: &bollard::Docker, id: &str, cmd: Vec<&str>) -> Result<(String, Option<i64>), String> {
    let created = docker
        .create_exec(
            id,
            CreateExecOptions {
                cmd: Some(cmd),
                attach_stdout: Some(true),
                attach_stderr: Some(true),
                ..Default::default()
            },
        )
        .await
        .map_err(|e| e.to_string())?;
    let mut out = String::new();
    if let StartExecResults::Attached { mut output, .. } =
        docker.start_exec(&created.id, None).await.map_err(|e| e.to_string())?
    {
        while let Some(chunk) = output.next().await {
            out.push_str(&chunk.map_err(|e| e.to_string())?.to_string());
        }
    }
    let code = docker.inspect_exec(&created.id).await.map_err(|e| e.to_string())?.exit_code;
    Ok((out, code))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apply::cluster::Member;
    use crate::verify::report::Status;

    fn member(n: u32, state: &str, address: Option<&str>) -> Member {
        Member {
            name: crate::apply::cluster::member_name(n),
            running: crate::apply::Running {
                id: format!("id{n}"),
                name: format!("pbx-asterisk-{n}"),
                restart_digest: None,
            },
            state: state.to_string(),
            address: address.map(|a| a.parse().unwrap()),
        }
    }

    #[test]
    fn a_member_passes_only_while_the_edge_holds_it_active() {
        let flags = vec![
            ("sip:172.29.0.128:5060".to_string(), "AP".to_string()),
            ("sip:172.29.0.129:5060".to_string(), "IP".to_string()),
            ("sip:172.29.0.140:5060".to_string(), "AP".to_string()),
        ];
        let check = |m: &Member| {
            let c = member_check(m, &flags);
            (c.status, c.detail)
        };
        let (status, detail) = check(&member(1, "running", Some("172.29.0.128")));
        assert_eq!(status, Status::Pass, "{detail}");
        let (status, detail) = check(&member(2, "running", Some("172.29.0.129")));
        assert_eq!(status, Status::Fail);
        assert!(detail.contains("is not active in the edge's dispatcher (IP)"), "{detail}");
        let (status, detail) = check(&member(3, "running", Some("172.29.0.130")));
        assert_eq!(status, Status::Fail);
        assert!(detail.contains("has no destination at 172.29.0.130"), "{detail}");
        let (status, detail) = check(&member(4, "paused", Some("172.29.0.131")));
        assert_eq!(status, Status::Fail);
        assert!(detail.contains("pbx-asterisk-4 is paused"), "{detail}");
        // A destination no member has: one check names it; a paused member's is no stranger.
        let members = [member(1, "running", Some("172.29.0.128")), member(2, "paused", Some("172.29.0.129"))];
        let strangers = strangers_check(&members, &flags).unwrap();
        assert_eq!(strangers.status, Status::Fail);
        assert!(strangers.detail.contains("sip:172.29.0.140:5060") && !strangers.detail.contains(".129"));
        assert!(strangers_check(&members, &flags[..2]).is_none());
        assert_eq!(pool_size_check(&members, 3).status, Status::Pass);
        assert_eq!(pool_size_check(&members[1..], 3).status, Status::Fail, "no member runs");
    }
}
