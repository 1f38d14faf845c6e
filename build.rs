//! Compiles every `.proto` under `proto/` into Rust (prost + tonic) and writes, per proto
//! package, the encoded `FileDescriptorSet` that the server of that package hands to reflection
//! (`<package>.bin`: that package's files and what they import, nothing of the other services).
//! protox parses the protos in pure Rust, so building needs no `protoc`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut protos = Vec::new();
    collect_protos(Path::new("proto"), &mut protos)?;
    protos.sort();
    println!("cargo:rerun-if-changed=proto");
    for proto in &protos {
        println!("cargo:rerun-if-changed={}", proto.display());
    }

    let descriptors = protox::compile(&protos, ["proto"])?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    let mut packages = BTreeMap::<&str, Vec<&str>>::new();
    for file in &descriptors.file {
        packages
            .entry(file.package())
            .or_default()
            .push(file.name());
    }
    for (package, files) in packages {
        let set = protox::compile(files, ["proto"])?;
        std::fs::write(
            out_dir.join(format!("{package}.bin")),
            prost::Message::encode_to_vec(&set),
        )?;
    }

    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // prost with 512-byte buffers instead of tonic's 8 KiB (src/codec.rs).
        .codec_path("crate::codec::SmallCodec")
        .compile_fds(descriptors)?;
    Ok(())
}

/// Finds every `.proto` file below `dir`, so a new API needs no change here.
fn collect_protos(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            collect_protos(&path, out)?;
        } else if path.extension().is_some_and(|ext| ext == "proto") {
            out.push(path);
        }
    }
    Ok(())
}
