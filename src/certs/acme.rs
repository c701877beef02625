//! ACME issuance (RFC 8555) with instant-acme: account kept and reused, HTTP-01 answered by a
//! standalone responder that runs only for the duration of the order, the certificate returned
//! in astrtc's layout.
//!
//! Owns: talking to the ACME server and the challenge responder. It does not decide when to
//! renew and does not write into `deploy/` (the caller stores the [`CertLayout`] atomically).
//! Status: the core of the ACME issue, tested against Pebble; the spec, CLI (`certs issue`,
//! `watch`), DNS-01 and the sidecar build on it.

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
}

/// How authorizations are proven.
#[derive(Debug, Clone)]
pub enum ChallengeMethod {
    /// HTTP-01: a standalone responder on `listen` for the duration of the order.
    Http01 {
        /// Where the responder listens (port 80 in production).
        listen: SocketAddr,
    },
    /// DNS-01 through a user's executable, run as `HOOK add NAME VALUE` and
    /// `HOOK remove NAME VALUE` (NAME is the full `_acme-challenge.` record name).
    Dns01Hook {
        /// The executable.
        hook: PathBuf,
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
        /// The address.
        addr: SocketAddr,
        /// Why.
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
    /// The order ended in an unexpected state.
    #[error("the order ended as {0:?}")]
    Order(OrderStatus),
    /// The account file could not be read or written.
    #[error("failed to use the ACME account file {}", path.display())]
    Account {
        /// The file.
        path: PathBuf,
        /// Why.
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
    super::local_ca::write_atomic(&req.account_file, json.as_bytes(), 0o600).map_err(aerr)?;
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
    let account = account(req).await?;
    let identifiers: Vec<Identifier> = req.names.iter().map(|n| Identifier::Dns(n.clone())).collect();
    let mut order = account.new_order(&NewOrder::new(&identifiers)).await?;
    match &req.method {
        ChallengeMethod::Http01 { listen } => {
            let tokens = Arc::new(Mutex::new(HashMap::new()));
            // The responder lives only while the order is open: the port is free again afterwards.
            let responder = http01_responder(*listen, tokens.clone()).await?;
            let result = validate_and_finalize(req, &mut order, &Proof::Http01(tokens)).await;
            responder.stop().await;
            result
        }
        ChallengeMethod::Dns01Hook { hook } => {
            let added = Arc::new(Mutex::new(Vec::new()));
            let result = validate_and_finalize(req, &mut order, &Proof::Dns01 { hook, added: added.clone() }).await;
            // Remove every record that was added, whatever the outcome.
            let records = std::mem::take(&mut *added.lock().expect("not poisoned"));
            for (name, value) in records {
                let removed = run_hook(hook, "remove", &name, &value).await;
                if result.is_ok() {
                    removed?;
                }
            }
            result
        }
    }
}

/// What a challenge is answered with.
enum Proof<'a> {
    Http01(Arc<Mutex<HashMap<String, String>>>),
    Dns01 { hook: &'a Path, added: Arc<Mutex<Vec<(String, String)>>> },
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
    let mut authorizations = order.authorizations();
    while let Some(authz) = authorizations.next().await {
        let mut authz = authz?;
        if authz.status == AuthorizationStatus::Valid {
            continue; // reused authorization
        }
        let name = authz.identifier().to_string();
        let kind = match proof {
            Proof::Http01(_) => ChallengeType::Http01,
            Proof::Dns01 { .. } => ChallengeType::Dns01,
        };
        let mut challenge = authz.challenge(kind.clone()).ok_or_else(|| AcmeError::Validation {
            name: name.clone(),
            detail: format!("the server offers no {kind:?} challenge"),
        })?;
        match proof {
            Proof::Http01(tokens) => {
                let key_auth = challenge.key_authorization().as_str().to_string();
                tokens.lock().expect("not poisoned").insert(challenge.token.clone(), key_auth);
            }
            Proof::Dns01 { hook, added } => {
                let record = format!("_acme-challenge.{}", name.trim_start_matches("*."));
                let value = challenge.key_authorization().dns_value();
                run_hook(hook, "add", &record, &value).await?;
                added.lock().expect("not poisoned").push((record, value));
            }
        }
        challenge.set_ready().await.map_err(|e| validation_error(req, e))?;
    }
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
