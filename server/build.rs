//! Generates the gRPC services and messages from `proto/` with the pure-Rust `protox` compiler, so that a fresh
//! clone builds without `protoc`: the protos become a `FileDescriptorSet` here, which tonic-prost-build turns
//! into Rust in `OUT_DIR` (included by `src/proto.rs`).

/// The protos of the gRPC APIs, under `proto/` (which also holds what they import beyond protobuf's own types).
const PROTOS: [&str; 3] = ["kserve/grpc_predict_v2.proto", "torchserve/inference.proto", "torchserve/management.proto"];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let descriptors = protox::compile(PROTOS, ["proto"])?;
    // The clients serve the tests and the load generator.
    tonic_prost_build::configure().build_client(true).build_server(true).compile_fds(descriptors)?;
    Ok(())
}
