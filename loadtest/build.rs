//! The gRPC mode's messages, client and server (for the bare tonic server) from the
//! repository's proto, compiled by protox (no `protoc` needed).

const PROTO: &str = "../proto/readtier/v1/readtier.proto";

fn main() {
    println!("cargo:rerun-if-changed={PROTO}");
    let fds = protox::compile([PROTO], ["../proto"])
        .unwrap_or_else(|e| panic!("{PROTO} does not compile: {e}"));
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .generate_default_stubs(true)
        .compile_fds(fds)
        .unwrap_or_else(|e| panic!("cannot generate the gRPC code from {PROTO}: {e}"));
}
