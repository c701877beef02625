//! ACME issuance (RFC 8555) with instant-acme: account kept and reused, HTTP-01 answered by a
//! standalone responder that runs only for the duration of the order, the certificate returned
//! in astrtc's layout.
//!
//! Owns: talking to the ACME server and the challenge responder. It does not decide when to
//! renew and does not write into `deploy/` (the caller stores the [`CertLayout`] atomically).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, ChallengeType, Identifier, NewAccount, NewOrder, OrderStatus,
    RetryPolicy,
};
use thiserror::Error;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::CertLayout;

/// What an issuance needs.
#[derive(Debug, Clone)]
pub struct AcmeRequest {
    /// The ACME directory URL.
    pub directory: String,
    /// Contact e-mail for the account.
    pub email: Option<String>,
    /// Extra CA certificates (PEM) to trust for the ACME server's TLS (private ACME servers).
    pub server_roots: Option<PathBuf>,
    /// DNS names for the certificate.
    pub names: Vec<String>,
    /// How authorizations are proven.
    pub method: ChallengeMethod,
    /// Where the account credentials are kept (JSON, mode 0600), reused on later runs.
    pub account_file: PathBuf,
    /// How long to wait for validation and issuance.
    pub timeout: Duration,
    /// Told about each step, for progress display.
    pub progress: Progress,
}

/// A step of an issuance, for progress display.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// An order was placed (attempt number, from 1).
    OrderPlaced {
        /// Which attempt.
        attempt: u32,
    },
    /// Manual DNS-01: this record must be created by hand now.
    CreateRecord {
        /// Full record name (`_acme-challenge.…`).
        name: String,
        /// TXT value.
        value: String,
    },
    /// Waiting until the TXT records are visible.
    WaitingForDns {
        /// How many records.
        records: usize,
    },
    /// The TXT records are visible.
    DnsVisible {
        /// After how long.
        after: Duration,
    },
    /// The CA was told to validate; waiting for it.
    Validating {
        /// How many authorizations.
        names: usize,
    },
    /// The CA validated every name.
    Validated {
        /// After how long.
        after: Duration,
    },
    /// Manual DNS-01: the records may be removed now.
    RemoveRecords {
        /// Their names.
        names: Vec<String>,
    },
}

/// Receives [`Event`]s.
#[derive(Clone, Default)]
pub struct Progress(Option<Arc<dyn Fn(Event) + Send + Sync>>);

impl Progress {
    /// Calls `f` for every event.
    pub fn new(f: impl Fn(Event) + Send + Sync + 'static) -> Self {
        Progress(Some(Arc::new(f)))
    }

    fn emit(&self, e: Event) {
        if let Some(f) = &self.0 {
            f(e);
        }
    }
}

impl std::fmt::Debug for Progress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() { "Progress(..)" } else { "Progress(none)" })
    }
}

/// How authorizations are proven.
#[derive(Debug, Clone)]
pub enum ChallengeMethod {
    /// HTTP-01: a standalone responder on `listen` for the duration of the order.
    Http01 {
        /// Where the responder listens (port 80 in production).
        listen: SocketAddr,
    },
    /// DNS-01. With a hook, it is run as `HOOK add NAME VALUE` and `HOOK remove NAME VALUE`
    /// (NAME is the full `_acme-challenge.` record name); without one, the records are shown as
    /// [`Event::CreateRecord`] for a person to create.
    Dns01 {
        /// The executable, or `None` for the manual flow.
        hook: Option<PathBuf>,
        /// Name servers asked whether the records are visible (empty: the zone's authoritative
        /// servers). With a hook and none given, the CA is told right after the hook returns.
        resolvers: Vec<SocketAddr>,
        /// How long to wait for the records to become visible.
        wait: Duration,
    },
}

/// Errors of ACME issuance.
#[derive(Debug, Error, miette::Diagnostic)]
pub enum AcmeError {
    /// The ACME server refused or failed a request.
    #[error("the ACME server failed: {0}")]
    Server(#[from] instant_acme::Error),
    /// The HTTP-01 responder could not listen.
    #[error("failed to listen for HTTP-01 on {addr}")]
    #[diagnostic(help("port 80 needs root or CAP_NET_BIND_SERVICE; or point the challenge at another port"))]
    Listen {
        /// The address it tried to listen on.
        addr: SocketAddr,
        /// The system's error (in use, or not permitted).
        #[source]
        source: std::io::Error,
    },
    /// An authorization did not become valid.
    #[error("validation of {name} failed: {detail}")]
    Validation {
        /// The name.
        name: String,
        /// The server's explanation.
        detail: String,
    },
    /// The DNS hook failed; the order was abandoned.
    #[error("the DNS hook `{hook} {action} {name} …` failed ({status}): {stderr}")]
    #[diagnostic(help("the hook is run as `HOOK add NAME VALUE` and `HOOK remove NAME VALUE`"))]
    Hook {
        /// The executable.
        hook: String,
        /// `add` or `remove`.
        action: String,
        /// The record name.
        name: String,
        /// Exit status.
        status: String,
        /// Its standard error.
        stderr: String,
    },
    /// A DNS-01 record did not become visible.
    #[error(transparent)]
    #[diagnostic(transparent)]
    Dns(#[from] super::dns::DnsError),
    /// The order ended in an unexpected state.
    #[error("the order ended as {0:?}")]
    Order(OrderStatus),
    /// The account file could not be read or written.
    #[error("failed to use the ACME account file {}", path.display())]
    Account {
        /// The account file that could not be read or written.
        path: PathBuf,
        /// The system's error.
        #[source]
        source: std::io::Error,
    },
}

async fn account(req: &AcmeRequest) -> Result<Account, AcmeError> {
    let builder = || match &req.server_roots {
        Some(p) => Account::builder_with_root(p),
        None => Account::builder(),
    };
    let aerr = |source| AcmeError::Account { path: req.account_file.clone(), source };
    if req.account_file.exists() {
        let text = std::fs::read_to_string(&req.account_file).map_err(aerr)?;
        let creds: AccountCredentials =
            serde_json::from_str(&text).map_err(|e| aerr(std::io::Error::other(e.to_string())))?;
        return Ok(builder()?.from_credentials(creds).await?);
    }
    let contact = req.email.as_ref().map(|e| format!("mailto:{e}"));
    let contacts: Vec<&str> = contact.iter().map(String::as_str).collect();
    let (account, creds) = builder()?
        .create(
            &NewAccount { contact: &contacts, terms_of_service_agreed: true, only_return_existing: false },
            req.directory.clone(),
            None,
        )
        .await?;
    if let Some(dir) = req.account_file.parent() {
        std::fs::create_dir_all(dir).map_err(aerr)?;
    }
    let json = serde_json::to_string(&creds).map_err(|e| aerr(std::io::Error::other(e.to_string())))?;
    crate::fsx::write_atomic(&req.account_file, json.as_bytes(), 0o600).map_err(aerr)?;
    Ok(account)
}

/// Answers `GET /.well-known/acme-challenge/TOKEN` from `tokens` until stopped or dropped.
struct Http01Responder {
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Http01Responder {
    /// Stops answering and waits until the port is closed.
    async fn stop(mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }
}

impl Drop for Http01Responder {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

async fn http01_responder(
    addr: SocketAddr,
    tokens: Arc<Mutex<HashMap<String, String>>>,
) -> Result<Http01Responder, AcmeError> {
    let listener = TcpListener::bind(addr).await.map_err(|source| AcmeError::Listen { addr, source })?;
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else { continue };
            let tokens = tokens.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let Ok(Ok(n)) = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await else {
                    return;
                };
                let request = String::from_utf8_lossy(&buf[..n]);
                let path = request.lines().next().and_then(|l| l.split_whitespace().nth(1)).unwrap_or("");
                let answer = path
                    .strip_prefix("/.well-known/acme-challenge/")
                    .and_then(|t| tokens.lock().expect("not poisoned").get(t).cloned());
                let response = match answer {
                    Some(body) => format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    ),
                    None => "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_string(),
                };
                let _ = stream.write_all(response.as_bytes()).await;
                let _ = stream.shutdown().await;
            });
        }
    });
    Ok(Http01Responder { task: Some(task) })
}

/// How many times a whole order is tried when the server keeps rejecting nonces.
pub const MAX_ATTEMPTS: u32 = 5;

/// A certificate and what it took.
#[derive(Debug, Clone)]
pub struct Issued {
    /// The certificate files.
    pub cert: CertLayout,
    /// Orders placed (1 unless the server rejected nonces more often than instant-acme retries).
    pub attempts: u32,
}

fn is_bad_nonce(e: &AcmeError) -> bool {
    matches!(e, AcmeError::Server(instant_acme::Error::Api(p))
        if p.r#type.as_deref().is_some_and(|t| t.ends_with(":badNonce")))
}

/// Obtains a certificate for `req.names`, proving control with `req.method`. instant-acme
/// retries a rejected nonce only three times; a server rejecting many nonces gets the whole
/// order retried, at most [`MAX_ATTEMPTS`] times with exponential backoff.
pub async fn issue(req: &AcmeRequest) -> Result<Issued, AcmeError> {
    let mut attempt = 1;
    loop {
        req.progress.emit(Event::OrderPlaced { attempt });
        match issue_once(req).await {
            Err(e) if is_bad_nonce(&e) && attempt < MAX_ATTEMPTS => {
                tokio::time::sleep(Duration::from_millis(250 << attempt)).await;
                attempt += 1;
            }
            Err(e) => return Err(e),
            Ok(cert) => return Ok(Issued { cert, attempts: attempt }),
        }
    }
}

async fn issue_once(req: &AcmeRequest) -> Result<CertLayout, AcmeError> {
    let acct = account(req).await?;
    let identifiers: Vec<Identifier> = req.names.iter().map(|n| Identifier::Dns(n.clone())).collect();
    let mut order = match acct.new_order(&NewOrder::new(&identifiers)).await {
        // The server forgot the stored account (a test CA restarted, a staging reset): make a
        // new one rather than failing forever.
        Err(instant_acme::Error::Api(p))
            if p.r#type.as_deref().is_some_and(|t| t.ends_with(":accountDoesNotExist")) =>
        {
            let _ = std::fs::remove_file(&req.account_file);
            account(req).await?.new_order(&NewOrder::new(&identifiers)).await?
        }
        other => other?,
    };
    match &req.method {
        ChallengeMethod::Http01 { listen } => {
            let tokens = Arc::new(Mutex::new(HashMap::new()));
            // The responder lives only while the order is open: the port is free again afterwards.
            let responder = http01_responder(*listen, tokens.clone()).await?;
            let result = validate_and_finalize(req, &mut order, &Proof::Http01(tokens)).await;
            responder.stop().await;
            result
        }
        ChallengeMethod::Dns01 { hook, .. } => {
            let added = Arc::new(Mutex::new(Vec::new()));
            let result =
                validate_and_finalize(req, &mut order, &Proof::Dns01 { hook: hook.as_deref(), added: added.clone() })
                    .await;
            // Remove every record that was added, whatever the outcome.
            let records = std::mem::take(&mut *added.lock().expect("not poisoned"));
            match hook {
                Some(hook) => {
                    for (name, value) in records {
                        let removed = run_hook(hook, "remove", &name, &value).await;
                        if result.is_ok() {
                            removed?;
                        }
                    }
                }
                None if !records.is_empty() => {
                    let mut names: Vec<String> = records.into_iter().map(|(n, _)| n).collect();
                    names.dedup();
                    req.progress.emit(Event::RemoveRecords { names });
                }
                None => {}
            }
            result
        }
    }
}

/// What a challenge is answered with.
enum Proof<'a> {
    Http01(Arc<Mutex<HashMap<String, String>>>),
    Dns01 { hook: Option<&'a Path>, added: Arc<Mutex<Vec<(String, String)>>> },
}

async fn run_hook(hook: &Path, action: &str, name: &str, value: &str) -> Result<(), AcmeError> {
    let out =
        tokio::process::Command::new(hook).args([action, name, value]).output().await.map_err(|e| AcmeError::Hook {
            hook: hook.display().to_string(),
            action: action.into(),
            name: name.into(),
            status: "not started".into(),
            stderr: e.to_string(),
        })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(AcmeError::Hook {
            hook: hook.display().to_string(),
            action: action.into(),
            name: name.into(),
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

/// A validation failure reported by the server, with its explanation.
fn validation_error(req: &AcmeRequest, e: instant_acme::Error) -> AcmeError {
    match e {
        instant_acme::Error::Api(problem) if !problem.r#type.as_deref().is_some_and(|t| t.ends_with(":badNonce")) => {
            AcmeError::Validation {
                name: req.names.join(", "),
                detail: format!(
                    "{} ({})",
                    problem.detail.clone().unwrap_or_default(),
                    problem.r#type.clone().unwrap_or_default()
                ),
            }
        }
        other => AcmeError::Server(other),
    }
}

async fn validate_and_finalize(
    req: &AcmeRequest,
    order: &mut instant_acme::Order,
    proof: &Proof<'_>,
) -> Result<CertLayout, AcmeError> {
    let kind = match proof {
        Proof::Http01(_) => ChallengeType::Http01,
        Proof::Dns01 { .. } => ChallengeType::Dns01,
    };
    // DNS-01 publishes every record first and tells the CA only once they are visible (a
    // wildcard and its base name share one record name with two values).
    if let Proof::Dns01 { hook, added } = proof {
        let mut records = Vec::new();
        let mut authorizations = order.authorizations();
        while let Some(authz) = authorizations.next().await {
            let mut authz = authz?;
            if authz.status == AuthorizationStatus::Valid {
                continue;
            }
            let name = authz.identifier().to_string();
            let challenge = authz.challenge(kind.clone()).ok_or_else(|| AcmeError::Validation {
                name: name.clone(),
                detail: format!("the server offers no {kind:?} challenge"),
            })?;
            let record = format!("_acme-challenge.{}", name.trim_start_matches("*."));
            let value = challenge.key_authorization().dns_value();
            match hook {
                Some(hook) => run_hook(hook, "add", &record, &value).await?,
                None => req.progress.emit(Event::CreateRecord { name: record.clone(), value: value.clone() }),
            }
            added.lock().expect("not poisoned").push((record.clone(), value.clone()));
            records.push((record, value));
        }
        if let ChallengeMethod::Dns01 { hook, resolvers, wait } = &req.method {
            if !records.is_empty() && (hook.is_none() || !resolvers.is_empty()) {
                req.progress.emit(Event::WaitingForDns { records: records.len() });
                let after = super::dns::wait_visible(&records, resolvers, *wait).await?;
                req.progress.emit(Event::DnsVisible { after });
            }
        }
    }
    let mut pending = 0;
    let mut authorizations = order.authorizations();
    while let Some(authz) = authorizations.next().await {
        let mut authz = authz?;
        if authz.status == AuthorizationStatus::Valid {
            continue; // reused authorization
        }
        let name = authz.identifier().to_string();
        let mut challenge = authz.challenge(kind.clone()).ok_or_else(|| AcmeError::Validation {
            name: name.clone(),
            detail: format!("the server offers no {kind:?} challenge"),
        })?;
        if let Proof::Http01(tokens) = proof {
            let key_auth = challenge.key_authorization().as_str().to_string();
            tokens.lock().expect("not poisoned").insert(challenge.token.clone(), key_auth);
        }
        challenge.set_ready().await.map_err(|e| validation_error(req, e))?;
        pending += 1;
    }
    let validating = std::time::Instant::now();
    req.progress.emit(Event::Validating { names: pending });
    let retry = RetryPolicy::new().initial_delay(Duration::from_millis(250)).backoff(1.5).timeout(req.timeout);
    let status = order.poll_ready(&retry).await.map_err(|e| validation_error(req, e))?;
    if status != OrderStatus::Ready {
        let mut detail = String::new();
        let mut authorizations = order.authorizations();
        while let Some(Ok(a)) = authorizations.next().await {
            for c in &a.challenges {
                if let Some(e) = &c.error {
                    detail.push_str(&format!(
                        "{:?}: {} ",
                        a.identifier().identifier,
                        e.detail.clone().unwrap_or_default()
                    ));
                }
            }
        }
        return Err(if detail.is_empty() {
            AcmeError::Order(status)
        } else {
            AcmeError::Validation { name: req.names.join(", "), detail: detail.trim().to_string() }
        });
    }
    req.progress.emit(Event::Validated { after: validating.elapsed() });
    let key_pem = order.finalize().await?;
    let chain_pem = order.poll_certificate(&retry).await?;
    Ok(CertLayout { chain_pem, key_pem, ca_pem: None })
}

/// The path astrtc keeps ACME account credentials at, for a CA directory.
pub fn account_file(state_dir: &Path, directory: &str) -> PathBuf {
    let host: String = directory
        .split("://")
        .nth(1)
        .unwrap_or(directory)
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '.' || c == '-' { c } else { '_' })
        .collect();
    state_dir.join(format!("acme-account-{host}.json"))
}
