//! astrtc turns one spec file (`astrtc.toml`) into a WebRTC-ready Asterisk deployment.
//!
//! The data flows one way: [`spec`] (what the user wrote) → [`plan`] (every value resolved once)
//! → [`render`] (every output file in memory, as a [`render::Bundle`]) → disk, atomically, or a
//! diff against disk. [`certs`] makes the WSS certificate the bundle carries. Nothing downstream
//! of the plan reads the spec again.
//!
//! ```no_run
//! use astrtc::{plan, render, spec};
//! let loaded = spec::load("pbx/astrtc.toml".as_ref())?;
//! let secrets = plan::load_secrets(&loaded)?;
//! let plan = plan::build(&loaded, &secrets, plan::HostFacts::detect())?;
//! astrtc::run::write_output(&plan, "pbx/deploy".as_ref())?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![deny(missing_docs)]

pub mod certs;
pub mod cli;
pub mod image;
pub mod init;
pub mod plan;
pub mod render;
pub mod run;
pub mod spec;
pub mod testing;
pub mod verify;
