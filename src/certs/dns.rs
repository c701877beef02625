//! DNS-01 propagation: whether a `_acme-challenge` TXT record is visible yet, asked of the
//! zone's authoritative name servers (or of servers the spec names), with no cache in between,
//! so "visible" means what the CA will see rather than what a caching resolver remembers.
//!
//! Owns: finding the servers to ask and polling them. It does not publish records (the hook or
//! the person does) and does not talk to the CA.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig, ResolverOpts};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::RData;
use hickory_resolver::TokioResolver;
use thiserror::Error;

/// How often the servers are asked.
pub const POLL_EVERY: Duration = Duration::from_secs(2);

/// Why a record could not be seen.
#[derive(Debug, Error, miette::Diagnostic)]
pub enum DnsError {
    /// The record did not show up in time.
    #[error("the TXT record {name} with value {value} was not visible at {servers} within {waited:?}{last}")]
    #[diagnostic(help(
        "check the record's name and value at your DNS provider; if it needs longer to propagate, raise \
         tls.acme.dns_timeout"
    ))]
    NotVisible {
        /// Record name.
        name: String,
        /// Expected value.
        value: String,
        /// Who was asked.
        servers: String,
        /// How long.
        waited: Duration,
        /// The last answer, if any.
        last: String,
    },
    /// No server to ask.
    #[error("found no name server for {name}: {reason}")]
    #[diagnostic(help("set tls.acme.dns_resolvers to the zone's authoritative name servers (IP or IP:PORT)"))]
    NoServers {
        /// Record name.
        name: String,
        /// What the resolver said.
        reason: String,
    },
}

fn resolver(servers: &[SocketAddr], recursion: bool) -> Result<TokioResolver, String> {
    let configs = servers
        .iter()
        .map(|s| {
            let mut udp = ConnectionConfig::udp();
            udp.port = s.port();
            let mut tcp = ConnectionConfig::tcp();
            tcp.port = s.port();
            NameServerConfig::new(s.ip(), true, vec![udp, tcp])
        })
        .collect();
    let mut opts = ResolverOpts::default();
    opts.cache_size = 0;
    opts.timeout = Duration::from_secs(3);
    opts.attempts = 1;
    opts.recursion_desired = recursion;
    opts.use_hosts_file = hickory_resolver::config::ResolveHosts::Never;
    TokioResolver::builder_with_config(ResolverConfig::from_name_servers(configs), TokioRuntimeProvider::default())
        .with_options(opts)
        .build()
        .map_err(|e| e.to_string())
}

/// The authoritative servers of the zone `name` is in: NS records of the closest enclosing name
/// that has some, asked of the system's resolver.
async fn authoritative(name: &str) -> Result<Vec<SocketAddr>, DnsError> {
    let no = |reason: String| DnsError::NoServers { name: name.to_string(), reason };
    let system =
        TokioResolver::builder_tokio().map_err(|e| no(e.to_string()))?.build().map_err(|e| no(e.to_string()))?;
    let mut candidate = name.trim_end_matches('.');
    loop {
        if let Ok(ns) = system.ns_lookup(format!("{candidate}.")).await {
            let hosts: Vec<String> = ns
                .answers()
                .iter()
                .filter_map(|r| match &r.data {
                    RData::NS(n) => Some(n.to_string()),
                    _ => None,
                })
                .collect();
            let mut servers = Vec::new();
            for host in &hosts {
                if let Ok(ips) = system.lookup_ip(host.as_str()).await {
                    servers.extend(ips.iter().map(|ip: IpAddr| SocketAddr::new(ip, 53)));
                }
            }
            if !servers.is_empty() {
                return Ok(servers);
            }
        }
        match candidate.split_once('.') {
            Some((_, parent)) if parent.contains('.') => candidate = parent,
            _ => return Err(no("no NS records for it or any parent".into())),
        }
    }
}

/// The TXT values at `name` according to the resolver's servers; none when it has no TXT record.
async fn txt_values(resolver: &TokioResolver, name: &str) -> Result<Vec<String>, String> {
    let lookup = match resolver.txt_lookup(format!("{}.", name.trim_end_matches('.'))).await {
        Ok(lookup) => lookup,
        Err(e) if e.is_no_records_found() => return Ok(Vec::new()),
        Err(e) => return Err(e.to_string()),
    };
    Ok(lookup
        .answers()
        .iter()
        .filter_map(|r| match &r.data {
            RData::TXT(t) => Some(t.txt_data.iter().map(|b| String::from_utf8_lossy(b)).collect::<String>()),
            _ => None,
        })
        .collect())
}

/// The TXT values at `name`, asked of `servers` directly (no cache); none when there is no TXT
/// record. Tells whether a record a hook published (or removed) is what the servers answer.
pub async fn txt_at(name: &str, servers: &[SocketAddr]) -> Result<Vec<String>, String> {
    txt_values(&resolver(servers, true)?, name).await
}

/// Waits until every `(name, value)` record is visible at `servers` (the zone's authoritative
/// servers when empty). Returns how long it took.
pub async fn wait_visible(
    records: &[(String, String)],
    servers: &[SocketAddr],
    timeout: Duration,
) -> Result<Duration, DnsError> {
    let start = Instant::now();
    for (name, value) in records {
        let (servers, recursion) =
            if servers.is_empty() { (authoritative(name).await?, false) } else { (servers.to_vec(), true) };
        let shown = servers.iter().map(SocketAddr::to_string).collect::<Vec<_>>().join(", ");
        let resolver =
            resolver(&servers, recursion).map_err(|reason| DnsError::NoServers { name: name.clone(), reason })?;
        loop {
            let last = match txt_values(&resolver, name).await {
                Ok(values) if values.iter().any(|v| v == value) => break,
                Ok(values) => format!("; last answer: {values:?}"),
                Err(e) => format!("; last answer: {e}"),
            };
            if start.elapsed() >= timeout {
                return Err(DnsError::NotVisible {
                    name: name.clone(),
                    value: value.clone(),
                    servers: shown,
                    waited: start.elapsed(),
                    last,
                });
            }
            tokio::time::sleep(POLL_EVERY).await;
        }
    }
    Ok(start.elapsed())
}
