//! astrtc's integration tests: one binary, one module per area.

mod common;

mod acme;
mod apply;
mod bench;
mod cli;
mod clients;
mod cluster;
mod compose;
mod crash;
mod examples;
mod fuzz;
mod helm;
mod hostile;
mod image;
mod media;
mod memory;
mod metrics;
mod render;
mod security;
mod testenv;
mod turn;
mod verify;
