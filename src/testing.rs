//! A testcontainers module for astrtc's Asterisk: start the image with a rendered deployment's
//! configs and keys, wait until its healthcheck says it is fully booted with the TLS listener
//! up, and ask it the questions the WebRTC guides ask by hand. For astrtc's own tests and for
//! users' integration tests, as testcontainers modules do for databases.
//!
//! Owns: starting and querying the container. It uses host networking, so the plan's ports are
//! the ports on 127.0.0.1; pick a spec whose ports are free.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use testcontainers::core::{AccessMode, CmdWaitFor, ExecCommand, Mount, WaitFor};
use testcontainers::runners::AsyncRunner;
use testcontainers::{ContainerAsync, GenericImage, ImageExt};
use thiserror::Error;

use crate::image;
use crate::media::ws::{WsConn, WsError};
use crate::plan::Plan;
use crate::verify::{self, ModuleRow, TlsReport, VerifyError};

/// Errors of the test harness.
#[derive(Debug, Error)]
pub enum TestingError {
    /// testcontainers failed (no engine, image missing, unhealthy...).
    #[error("failed to run the Asterisk container: {0}")]
    Container(#[from] testcontainers::TestcontainersError),
    /// `asterisk -rx` failed.
    #[error("`asterisk -rx {command:?}` exited {code:?}: {stderr}")]
    Rx {
        /// The CLI command.
        command: String,
        /// Exit code.
        code: Option<i64>,
        /// Its stderr.
        stderr: String,
    },
    /// A check failed.
    #[error(transparent)]
    Verify(#[from] VerifyError),
    /// The WebSocket could not be opened.
    #[error(transparent)]
    WebSocket(#[from] WsError),
    /// Reading the keys failed.
    #[error("failed to read {}", path.display())]
    Read {
        /// The file that could not be read.
        path: PathBuf,
        /// The system's error.
        #[source]
        source: std::io::Error,
    },
}

/// A running astrtc Asterisk.
pub struct AsteriskContainer {
    container: ContainerAsync<GenericImage>,
    plan: Plan,
    deploy: PathBuf,
}

/// Starts the plan's image with `deploy/asterisk` and `deploy/keys` mounted read-only, and
/// waits until the image's healthcheck passes (Asterisk fully booted, TLS listener accepting).
pub async fn start(plan: &Plan, deploy: &Path) -> Result<AsteriskContainer, TestingError> {
    start_with_env(plan, deploy, &[]).await
}

/// [`start`], with extra environment variables for the container (e.g. `ASTRTC_MALLOC=glibc`).
pub async fn start_with_env(
    plan: &Plan,
    deploy: &Path,
    env: &[(&str, &str)],
) -> Result<AsteriskContainer, TestingError> {
    let image::ImageRef { repository, tag } = plan.image_ref();
    let abs = std::path::absolute(deploy).map_err(|source| TestingError::Read { path: deploy.into(), source })?;
    let container = GenericImage::new(repository, tag)
        .with_wait_for(WaitFor::healthcheck())
        .with_network("host")
        .with_mount(
            Mount::bind_mount(abs.join("asterisk").display().to_string(), image::CONFIG_DIR)
                .with_access_mode(AccessMode::ReadOnly),
        )
        .with_mount(
            Mount::bind_mount(abs.join("keys").display().to_string(), image::KEYS_DIR)
                .with_access_mode(AccessMode::ReadOnly),
        )
        .with_startup_timeout(Duration::from_secs(120));
    // What the plan sets in the container's environment (as compose and the chart do), then the caller's.
    let complexity = plan.performance.opus_complexity.map(|c| c.to_string());
    let planned = complexity.as_deref().map(|c| (image::OPUS_COMPLEXITY_ENV, c));
    let container = planned.iter().chain(env).fold(container, |c, (k, v)| c.with_env_var(*k, *v)).start().await?;
    Ok(AsteriskContainer { container, plan: plan.clone(), deploy: abs })
}

impl AsteriskContainer {
    /// The container id.
    pub fn id(&self) -> &str {
        self.container.id()
    }

    /// Runs an Asterisk CLI command (`asterisk -rx`) and returns its output.
    pub async fn rx(&self, command: &str) -> Result<String, TestingError> {
        let mut exec = self
            .container
            .exec(ExecCommand::new(["/usr/sbin/asterisk", "-rx", command]).with_cmd_ready_condition(CmdWaitFor::exit()))
            .await?;
        let stdout = String::from_utf8_lossy(&exec.stdout_to_vec().await?).into_owned();
        let code = exec.exit_code().await?;
        if code != Some(0) {
            let stderr = String::from_utf8_lossy(&exec.stderr_to_vec().await?).into_owned();
            return Err(TestingError::Rx { command: command.into(), code, stderr });
        }
        Ok(stdout)
    }

    /// Stops and removes the container now (dropping it removes it too, but in the background).
    pub async fn remove(self) -> Result<(), TestingError> {
        Ok(self.container.rm().await?)
    }

    /// Runs a command in the container and returns its standard output (any exit code).
    pub async fn exec(&self, command: &[&str]) -> Result<String, TestingError> {
        let mut exec = self
            .container
            .exec(ExecCommand::new(command.iter().copied()).with_cmd_ready_condition(CmdWaitFor::exit()))
            .await?;
        Ok(String::from_utf8_lossy(&exec.stdout_to_vec().await?).into_owned())
    }

    /// A file of Asterisk's `/proc/PID/` (its PID from `/run/asterisk/asterisk.pid`; the
    /// entrypoint stays PID 1 to drain it on SIGTERM).
    pub async fn asterisk_proc(&self, file: &str) -> Result<String, TestingError> {
        let script = format!("cat /proc/$(cat /run/asterisk/asterisk.pid)/{file}");
        self.exec(&["/bin/sh", "-c", &script]).await
    }

    /// Asterisk's resident memory in bytes (`VmRSS` in its `/proc/PID/status`).
    pub async fn asterisk_rss(&self) -> Result<u64, TestingError> {
        let status = self.asterisk_proc("status").await?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map(|kb| kb * 1024)
            .ok_or_else(|| TestingError::Rx { command: "cat /proc/PID/status".into(), code: None, stderr: status })
    }

    /// Starts a shell command in the background inside the container (for daemons such as the
    /// certificate reloader) and returns once it is started. Its output is discarded: an attached
    /// stream would close when this call returns and kill the daemon with SIGPIPE.
    pub async fn spawn(&self, shell_command: &str) -> Result<(), TestingError> {
        let line = format!("{shell_command} >/dev/null 2>&1 &");
        self.container
            .exec(ExecCommand::new(["/bin/sh", "-c", line.as_str()]).with_cmd_ready_condition(CmdWaitFor::exit()))
            .await?;
        Ok(())
    }

    /// Everything Asterisk logged so far (the container's stdout and stderr).
    pub async fn logs(&self) -> Result<String, TestingError> {
        let mut out = self.container.stdout_to_vec().await?;
        out.extend(self.container.stderr_to_vec().await?);
        Ok(String::from_utf8_lossy(&out).into_owned())
    }

    /// `module show like PATTERN`, parsed.
    pub async fn modules_like(&self, pattern: &str) -> Result<Vec<ModuleRow>, TestingError> {
        Ok(verify::parse_module_show(&self.rx(&format!("module show like {pattern}")).await?))
    }

    /// Endpoint ids from `pjsip show endpoints`.
    pub async fn endpoints(&self) -> Result<Vec<String>, TestingError> {
        Ok(verify::parse_endpoints(&self.rx("pjsip show endpoints").await?))
    }

    /// The HTTPS binding from `http show status`.
    pub async fn https_binding(&self) -> Result<Option<String>, TestingError> {
        Ok(verify::parse_https_binding(&self.rx("http show status").await?))
    }

    /// The WSS listener's address on this host.
    pub fn wss_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.plan.network.wss_port))
    }

    fn ca_pem(&self) -> Result<String, TestingError> {
        let path = self.deploy.join("keys").join(crate::certs::files::CA);
        std::fs::read_to_string(&path).map_err(|source| TestingError::Read { path, source })
    }

    /// TLS handshake verified against the deployment's `ca.crt` for the spec's domain.
    pub fn check_tls(&self) -> Result<TlsReport, TestingError> {
        Ok(verify::check_tls(self.wss_addr(), &self.plan.tls.domain, &self.ca_pem()?)?)
    }

    /// The WebSocket upgrade on `/ws` with the `sip` subprotocol; returns the subprotocol.
    pub async fn check_websocket(&self) -> Result<String, TestingError> {
        let conn = WsConn::connect(self.wss_addr(), &self.plan.tls.domain, &self.ca_pem()?, "/ws").await?;
        conn.close().await;
        Ok("sip".into())
    }
}
