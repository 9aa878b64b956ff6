//! `gate daemon`: one engine for every agent on the host, a control socket, and the host's
//! audit stream.
pub mod asks;
pub mod client;
pub mod config;
pub mod core;
pub mod peer;
pub mod ringfill;
pub mod server;
