//! Compiles Meridian's own protobuf API (proto/meridian) and the Envoy messages xds-api lacks
//! (proto/envoy/shim) with protox: no protoc needed on the machine.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let descriptors = protox::compile(["meridian/ops/v1/ops.proto"], ["proto"])?;
    tonic_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(descriptors)?;

    let shim = protox::compile(
        ["envoy/shim/tls.proto", "envoy/shim/tls_inspector.proto"],
        ["proto"],
    )?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    let mut only_shim = shim.clone();
    only_shim
        .file
        .retain(|f| f.name().starts_with("envoy/shim/"));
    std::fs::write(
        out_dir.join("envoy_shim.bin"),
        prost::Message::encode_to_vec(&only_shim),
    )?;
    tonic_build::configure()
        .build_server(false)
        .build_client(false)
        .compile_fds(shim)?;
    Ok(())
}
