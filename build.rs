//! Generates the storage-node protocol's messages, client and server from
//! `proto/node.proto`, with protox (a protobuf compiler in Rust), so no
//! `protoc` needs to be installed; and names the commit being built
//! (`EG_GIT_COMMIT`, for the build-info metric; not `ENERGYGUARD_…`, which
//! cargo also sets for `cargo run` and the configuration would read).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/node.proto");
    println!("cargo:rerun-if-changed=.git/HEAD");
    println!("cargo:rerun-if-changed=.git/refs/heads");
    let commit = std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|out| out.status.success())
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .map(|text| text.trim().to_string())
        .filter(|text| !text.is_empty())
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=EG_GIT_COMMIT={commit}");
    let descriptors = protox::compile(["proto/node.proto"], ["proto"])?;
    tonic_prost_build::configure().compile_fds(descriptors)?;
    Ok(())
}
