//! astrtc's integration tests: one binary, one module per area.

mod common;

mod acme;
mod cli;
mod clients;
mod compose;
mod helm;
mod hostile;
mod image;
mod media;
mod render;
mod verify;
