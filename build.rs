//! Compiles the gRPC contract (a fresh machine has no `protoc`, so the vendored one is used),
//! and lists the sample handbook for the demo to embed.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

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
    embed_examples(&out_dir)
}

/// Writes `demo_examples.rs`: the handbook's files and the demo questions as `include_str!`s,
/// so that an installed binary or a container image runs the demo without the source tree.
/// The paths are written relative to `CARGO_MANIFEST_DIR`, resolved when the crate compiles:
/// cargo does not run this script again when the checkout moves (a copy for a mutation run,
/// a renamed directory), and an absolute path written here would keep naming the old place.
fn embed_examples(out_dir: &Path) -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=examples");
    let examples = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("examples");
    let mut files: Vec<PathBuf> = std::fs::read_dir(examples.join("handbook"))?
        .map(|entry| entry.map(|entry| entry.path()))
        .collect::<Result<_, _>>()?;
    files.sort();
    let mut code = String::from("/// The sample handbook: (file name, contents).\n");
    code.push_str("pub const HANDBOOK: &[(&str, &str)] = &[\n");
    for file in files.iter().filter(|file| file.is_file()) {
        let name = file
            .file_name()
            .and_then(|name| name.to_str())
            .ok_or("file name")?;
        writeln!(
            code,
            "    ({name:?}, include_str!(concat!(env!(\"CARGO_MANIFEST_DIR\"), {:?}))),",
            format!("/examples/handbook/{name}")
        )?;
    }
    code.push_str("];\n/// The demo questions (`questions.json`).\n");
    code.push_str(
        "pub const QUESTIONS: &str = \
         include_str!(concat!(env!(\"CARGO_MANIFEST_DIR\"), \"/examples/questions.json\"));\n",
    );
    std::fs::write(out_dir.join("demo_examples.rs"), code)?;
    Ok(())
}
