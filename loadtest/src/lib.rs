//! ferroserve-loadtest: a load generator for ferroserve, TorchServe and KServe v2 servers that answers
//! how much load a model takes under a latency objective, with which batch settings, and where the time
//! goes. It talks to servers over HTTP, and with `--grpc` sends KServe v2's `ModelInfer` over gRPC ([`grpc`]).
//!
//! A run is a closed loop (`--concurrency`) or an open loop (`--rate`, latency from each request's scheduled
//! send, as wrk2 corrects for coordinated omission) recorded in HdrHistograms ([`recorder`]), reported as
//! text, JSON and an HdrHistogram interval log ([`report`]), and judged against SLOs ([`slo`]). `tune`
//! ([`tune`]) searches batch sizes and delays through the server's management API.

pub mod body;
pub mod cli;
pub mod client;
pub mod cpu;
pub mod error;
pub mod grpc;
pub mod keys;
pub mod load;
pub mod metrics;
pub mod outcome;
pub mod progress;
pub mod recorder;
pub mod report;
pub mod run;
pub mod slo;
pub mod tune;
pub mod units;

pub use error::Error;
