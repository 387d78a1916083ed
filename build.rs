//! Build script, three jobs.
//!
//! 1. The OpenAPI document: turns `docs/openapi.yaml`, the API's contract as written by
//!    hand, into the JSON the node serves at `GET /openapi.json`. Once per build:
//!    serving it then costs a copy of a static buffer, the node carries no YAML parser,
//!    and the served document cannot drift from the one in the repository. A document
//!    that is not valid YAML fails the build, naming the line.
//! 2. The commit this binary is built from, for `readtier_build_info`: `GIT_COMMIT`
//!    (set by a build that has no `.git`, such as a container build given it as an
//!    argument) wins; else `git rev-parse` of the checkout; else "unknown" (a source
//!    tarball). Cargo re-runs this when HEAD or the branch it names moves, so the label
//!    follows commits without a clean build.
//! 3. The gRPC service: `proto/readtier/v1/readtier.proto` compiled by protox (pure
//!    Rust, so build machines need no `protoc`) into a FileDescriptorSet, from which
//!    tonic-prost-build writes the messages and the server trait; the same descriptor
//!    set, written to `OUT_DIR`, is what server reflection describes.

use std::path::PathBuf;
use std::process::Command;

const SOURCE: &str = "docs/openapi.yaml";

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    openapi();
    commit();
    grpc();
}

const PROTO: &str = "proto/readtier/v1/readtier.proto";

/// The gRPC messages and server, and the descriptor set reflection serves.
fn grpc() {
    println!("cargo:rerun-if-changed={PROTO}");
    let fds = protox::compile([PROTO], ["proto"])
        .unwrap_or_else(|e| panic!("{PROTO} does not compile: {e}"));
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let bytes = prost::Message::encode_to_vec(&fds);
    std::fs::write(out.join("readtier_descriptor.bin"), bytes)
        .unwrap_or_else(|e| panic!("cannot write the descriptor set: {e}"));
    tonic_prost_build::configure()
        .build_client(false)
        .build_server(true)
        // Encoded by hand from the L1 entries (src/grpc/batch.rs): no copies per member.
        .extern_path(
            ".readtier.v1.BatchGetEntitlementsResponse",
            "crate::grpc::batch::BatchAnswer",
        )
        .compile_fds(fds)
        .unwrap_or_else(|e| panic!("cannot generate the gRPC code from {PROTO}: {e}"));
}

/// The served OpenAPI document.
fn openapi() {
    println!("cargo:rerun-if-changed={SOURCE}");
    let text =
        std::fs::read_to_string(SOURCE).unwrap_or_else(|e| panic!("cannot read {SOURCE}: {e}"));
    // serde_yaml's own value keeps the document's key order (serde_json's would sort).
    let doc: serde_yaml::Value =
        serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{SOURCE} is not valid YAML: {e}"));
    let json = serde_json::to_vec(&doc)
        .unwrap_or_else(|e| panic!("{SOURCE} cannot be written as JSON: {e}"));
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"))
        .join("openapi.json");
    std::fs::write(&out, json).unwrap_or_else(|e| panic!("cannot write {}: {e}", out.display()));
}

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let s = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (!s.is_empty()).then_some(s)
}

/// Watches a git file for changes, if it exists (cargo would re-run the script on
/// every build for a missing one).
fn watch(path: Option<String>) {
    if let Some(p) = path.filter(|p| std::path::Path::new(p).exists()) {
        println!("cargo:rerun-if-changed={p}");
    }
}

/// `readtier_build_info`'s commit.
fn commit() {
    println!("cargo:rerun-if-env-changed=GIT_COMMIT");
    let commit = std::env::var("GIT_COMMIT")
        .ok()
        .filter(|c| !c.trim().is_empty())
        .or_else(|| {
            // Re-run when HEAD moves: HEAD itself (a checkout) and the ref it names (a
            // commit on the branch), wherever this checkout (or worktree) keeps them.
            for file in ["HEAD", "packed-refs"] {
                watch(git(&["rev-parse", "--git-path", file]));
            }
            if let Some(r) = git(&["symbolic-ref", "-q", "HEAD"]) {
                watch(git(&["rev-parse", "--git-path", &r]));
            }
            git(&["rev-parse", "--short=12", "HEAD"])
        })
        .unwrap_or_else(|| "unknown".to_string());
    // Not READTIER_*: cargo also sets this in the environment of `cargo run` and of
    // test binaries, whose child processes would read it as a configuration key.
    println!("cargo:rustc-env=BUILD_GIT_COMMIT={commit}");
}
