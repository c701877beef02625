//! astrtc turns one spec file (`astrtc.toml`) into a WebRTC-ready Asterisk deployment.
//!
//! The data flows one way: [`spec`] (what the user wrote, validated into typed values) →
//! [`plan`] (every value resolved once) → [`render`] (every output file in memory, as a
//! [`render::Bundle`]) → disk, atomically ([`fsx`]), or a diff against disk. [`deploy`] gathers
//! what rendering needs from disk and writes the result; [`certs`] makes and keeps the WSS
//! certificate; [`image`] builds the images; [`verify`] checks a running deployment. Nothing
//! downstream of the plan reads the spec again. [`apply`] brings a running compose deployment to
//! a new render (reload in place or graceful restart). The commands themselves live in the binary.
//!
//! ```no_run
//! use astrtc::{deploy, plan};
//! let plan = plan::load("pbx/astrtc.toml".as_ref(), plan::HostFacts::detect())?;
//! deploy::write(&plan, &deploy::default_out("pbx/astrtc.toml".as_ref()))?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![deny(missing_docs)]

pub mod apply;
pub mod assets;
pub mod bench;
pub mod certs;
pub mod cli;
pub mod deploy;
pub mod fsx;
pub mod image;
pub mod init;
pub mod media;
pub mod plan;
pub mod render;
pub mod spec;
pub mod testenv;
#[cfg(feature = "testing")]
pub mod testing;
pub mod turn;
pub mod verify;
