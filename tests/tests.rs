//! astrtc's integration tests: one binary, one module per area.

mod common;

mod acme;
mod bench;
mod cli;
mod clients;
mod compose;
mod crash;
mod examples;
mod fuzz;
mod helm;
mod hostile;
mod image;
mod media;
mod memory;
mod render;
mod testenv;
mod verify;
