//! Checks of a running astrtc Asterisk (`astrtc verify`, also used by the test suite and
//! `astrtc::testing`): the WSS listener's certificate, the WebSocket upgrade, REGISTER over WSS,
//! OPTIONS over UDP, parsers for the Asterisk CLI output the WebRTC guides ask operators to read
//! by eye, and with `--call` real calls and the diagnosis of their failures.
//!
//! Owns: the checks ([`checks`]), the calls' diagnosis ([`call`]), the parsing ([`cli_output`])
//! and the report ([`report`]). It reads the plan, never the spec, and it starts no containers:
//! it talks to a running deployment over the network — SIP, WSS and media through
//! [`crate::media`] — and, when the container is local, through the Docker API.

pub mod call;
pub mod checks;
pub mod cli_output;
pub mod report;
pub mod tls;

pub use call::CallOptions;
pub use checks::{asterisk_rx, compose_container, local_container, verify, Target};
pub use cli_output::{parse_dispatcher_list, parse_endpoints, parse_https_binding, parse_module_show, ModuleRow};
pub use report::{Check, Report, Status};
pub use tls::{check_tls, TlsReport, VerifyError};
