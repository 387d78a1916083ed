//! Build script: the commit this binary is built from, for `readtier_build_info`.
//!
//! `GIT_COMMIT` (set by a build that has no `.git`, such as a container build given it
//! as an argument) wins; else `git rev-parse` of the checkout; else "unknown" (a source
//! tarball). Cargo re-runs this when HEAD or the branch it names moves, so the label
//! follows commits without a clean build.

use std::process::Command;

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

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
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
    println!("cargo:rustc-env=READTIER_GIT_COMMIT={commit}");
}
