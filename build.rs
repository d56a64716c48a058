//! Generates the storage-node protocol's messages, client and server from
//! `proto/node.proto`, with protox (a protobuf compiler in Rust), so no
//! `protoc` needs to be installed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/node.proto");
    let descriptors = protox::compile(["proto/node.proto"], ["proto"])?;
    tonic_prost_build::configure().compile_fds(descriptors)?;
    Ok(())
}
