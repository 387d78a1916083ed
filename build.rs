//! Turns `docs/openapi.yaml`, the API's contract as written by hand, into the JSON the
//! node serves at `GET /openapi.json`. Once per build: serving it then costs a copy of
//! a static buffer, the node carries no YAML parser, and the served document cannot
//! drift from the one in the repository (there is no second copy to keep in sync).
//! A document that is not valid YAML fails the build, naming the line.

use std::path::PathBuf;

const SOURCE: &str = "docs/openapi.yaml";

fn main() {
    println!("cargo:rerun-if-changed={SOURCE}");
    println!("cargo:rerun-if-changed=build.rs");
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
