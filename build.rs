//! Compiles Meridian's own protobuf API (proto/meridian) into Rust, and the Envoy API protos
//! vendored from envoy-types (proto/envoy-api) into a descriptor set for rendering served
//! resources as JSON. protox parses both: no protoc needed on the machine.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let descriptors = protox::compile(["meridian/ops/v1/ops.proto"], ["proto"])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(descriptors)?;

    let roots = std::fs::read_to_string("proto/envoy-api/ROOTS")?;
    let envoy_api = protox::compile(roots.lines(), ["proto/envoy-api"])?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out_dir.join("envoy_api.bin"),
        prost::Message::encode_to_vec(&envoy_api),
    )?;
    Ok(())
}
