//! Compiles the eBPF programs of `ebpf/*.c` (at the workspace root) with clang into
//! `OUT_DIR`, where `src/ebpf` embeds them.

use std::env;
use std::path::{Path, PathBuf};
use std::process::{Command, exit};

/// The programs built, by file stem.
const PROGRAMS: &[&str] = &["mesh_vip", "mesh_ingress"];

fn fail(msg: &str) -> ! {
    eprintln!("error: {msg}");
    exit(1);
}

fn main() {
    let manifest = env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| fail("CARGO_MANIFEST_DIR is not set: run the build through cargo"));
    let out = env::var_os("OUT_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| fail("OUT_DIR is not set: run the build through cargo"));
    let src = manifest.join("../../ebpf");
    // Debian keeps asm/types.h under /usr/include/<arch>-linux-gnu.
    let arch = env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_else(|_| "x86_64".into());
    let clang = env::var("CLANG").unwrap_or_else(|_| "clang".into());
    println!("cargo:rerun-if-env-changed=CLANG");
    println!("cargo:rerun-if-changed={}", src.display());
    for entry in std::fs::read_dir(&src)
        .unwrap_or_else(|e| fail(&format!("reading {}: {e}", src.display())))
        .flatten()
    {
        let p = entry.path();
        if matches!(p.extension().and_then(|e| e.to_str()), Some("c" | "h")) {
            println!("cargo:rerun-if-changed={}", p.display());
        }
    }
    for name in PROGRAMS {
        compile(&clang, &src, &out, &arch, name);
    }
}

fn compile(clang: &str, src: &Path, out: &Path, arch: &str, name: &str) {
    let input = src.join(format!("{name}.c"));
    let output = out.join(format!("{name}.o"));
    let status = Command::new(clang)
        .args([
            "-O2", "-g", "-target", "bpf", "-mcpu=v3", "-Wall", "-Werror",
        ])
        .arg(format!("-I/usr/include/{arch}-linux-gnu"))
        .arg("-I")
        .arg(src)
        .arg("-c")
        .arg(&input)
        .arg("-o")
        .arg(&output)
        .status();
    match status {
        Ok(s) if s.success() => {}
        Ok(s) => fail(&format!(
            "clang failed ({s}) compiling {}; see its messages above (a missing \
             bpf/bpf_helpers.h means: install clang and libbpf-dev: apt-get install clang \
             libbpf-dev)",
            input.display()
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => fail(&format!(
            "`{clang}` not found, needed to compile the eBPF programs in {}: \
             install clang and libbpf-dev: apt-get install clang libbpf-dev",
            src.display()
        )),
        Err(e) => fail(&format!("running `{clang}`: {e}")),
    }
}
