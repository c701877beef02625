//! Checks of a running astrtc Asterisk (`astrtc verify`, also used by the test suite and
//! `astrtc::testing`): the WSS listener's certificate, the WebSocket upgrade, REGISTER over WSS,
//! OPTIONS over UDP, and parsers for the Asterisk CLI output the WebRTC guides ask operators to
//! read by eye.
//!
//! Owns: the checks ([`checks`]), the parsing ([`cli_output`]) and the report ([`report`]). It
//! reads the plan, never the spec, and it starts no containers: it talks to a running deployment
//! over the network and, when the container is local, through the Docker API.

pub mod checks;
pub mod cli_output;
pub mod report;
pub mod sip;
pub mod tls;

pub use checks::{asterisk_rx, verify, Target};
pub use cli_output::{parse_endpoints, parse_https_binding, parse_module_show, ModuleRow};
pub use report::{Check, Report, Status};
pub use tls::{check_tls, websocket_upgrade, TlsReport, VerifyError};
