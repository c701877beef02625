//! Checks of a running astrtc Asterisk, shared by the test suite, [`crate::testing`] and (later)
//! `astrtc verify`: the WSS listener's certificate, the WebSocket upgrade, and parsers for the
//! Asterisk CLI output the WebRTC guides ask operators to read by eye.
//!
//! Owns: the checks and the parsing. It does not start containers or read specs.

pub mod checks;
pub mod cli_output;
pub mod report;
pub mod sip;
pub mod tls;

pub use checks::{verify, Target};
pub use cli_output::{parse_endpoints, parse_https_binding, parse_module_show, ModuleRow};
pub use report::{Check, Report, Status};
pub use tls::{check_tls, websocket_upgrade, TlsReport, VerifyError};
