//! The client stubs and messages from the repository's proto (`../proto`), compiled by
//! protox (pure Rust: no `protoc` needed).

const PROTO: &str = "../proto/readtier/v1/readtier.proto";

fn main() {
    println!("cargo:rerun-if-changed={PROTO}");
    let fds = protox::compile([PROTO], ["../proto"])
        .unwrap_or_else(|e| panic!("{PROTO} does not compile: {e}"));
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(false)
        .compile_fds(fds)
        .unwrap_or_else(|e| panic!("cannot generate the gRPC client from {PROTO}: {e}"));
}
