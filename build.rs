//! Compiles the gRPC contract. A fresh machine has no `protoc`, so the vendored one is used.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");

    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);

    let well_known_includes = protoc_bin_vendored::include_path()?;
    tonic_prost_build::configure()
        .file_descriptor_set_path(out_dir.join("deeprecall_descriptor.bin"))
        .emit_rerun_if_changed(false)
        .compile_with_config(
            config,
            &[PathBuf::from("proto/deeprecall/v1/deeprecall.proto")],
            &[PathBuf::from("proto"), well_known_includes],
        )?;
    Ok(())
}
