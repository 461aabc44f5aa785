//! Build script. Does nothing unless the `cuda` feature is on; then it
//!
//! 1. compiles every `kernels/*.cu` with nvcc into ONE fatbin (SASS for sm_80, sm_86, sm_89,
//!    sm_90, plus compute_80 PTX for later GPUs to JIT), written to `$OUT_DIR/hcn_kernels.fatbin`
//!    and embedded in the library by `src/cuda/module.rs` (`include_bytes!`). Because ptxas runs
//!    for every listed architecture, a kernel that does not assemble for one of them fails the
//!    build — CI checks this without a GPU;
//! 2. with the `cuda-emulation` feature (tests only), compiles the same kernel sources for the host (g++, C++20) together with the emulation
//!    header `kernels/emu/cuda_emu.h` into a static library, so `tests/cuda_emulation.rs` can
//!    *run* every kernel on the CPU (see DEVELOPERS.md, "CUDA toolchain").
//!
//! nvcc is found without any configuration: `$NVCC`, then the project-local install made by
//! `scripts/install-nvcc.sh` (`.tools/cuda/nvidia/cu13/bin/nvcc`), then `nvcc` on `PATH`.
//! `$NVCC_CCBIN` optionally picks nvcc's host compiler (`-ccbin`).

use std::path::{Path, PathBuf};
use std::process::Command;

/// The interface host and kernels share (score modes, concat blocks, every kernel's parameter
/// struct and entry points): the crate's own definitions, written into `hcn_abi.h`.
// The crate uses the rest (without `cuda`, src/abi.rs allows it itself).
#[cfg_attr(feature = "cuda", allow(dead_code))]
#[path = "src/abi.rs"]
mod abi;

/// `-gencode` pairs: real SASS for the architectures we serve on, PTX for the oldest so that a
/// newer GPU can JIT it.
const GENCODES: &[(&str, &str)] = &[
    ("compute_80", "sm_80"),
    ("compute_86", "sm_86"),
    ("compute_89", "sm_89"),
    ("compute_90", "sm_90"),
    ("compute_80", "compute_80"),
];

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    #[cfg(feature = "serve")]
    compile_proto();
    if std::env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    let root = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("set by cargo"));
    let kdir = root.join("kernels");

    let kernels = list(&kdir, "cu");
    let mut watched = kernels.clone();
    watched.extend(list(&kdir, "cuh"));
    watched.extend(list(&kdir.join("emu"), "h"));
    watched.extend(list(&kdir.join("emu"), "cpp"));
    println!("cargo:rerun-if-changed={}", kdir.display());
    for f in &watched {
        println!("cargo:rerun-if-changed={}", f.display());
    }
    println!("cargo:rerun-if-env-changed=NVCC");
    println!("cargo:rerun-if-env-changed=NVCC_CCBIN");

    println!("cargo:rerun-if-changed=src/abi.rs");
    std::fs::write(out.join("hcn_abi.h"), abi::header()).expect("writing hcn_abi.h");

    build_fatbin(&root, &kdir, &kernels, &out);
    if std::env::var_os("CARGO_FEATURE_CUDA_EMULATION").is_some() {
        build_emulation(&kdir, &out);
    }
}

/// Files of `dir` ending in `.ext`, sorted (so the generated translation unit is stable).
fn list(dir: &Path, ext: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == ext))
        .collect();
    v.sort();
    v
}

fn find_nvcc(root: &Path) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("NVCC") {
        return Some(PathBuf::from(p));
    }
    let local = root.join(".tools/cuda/nvidia/cu13/bin/nvcc");
    if local.is_file() {
        return Some(local);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join("nvcc"))
        .find(|p| p.is_file())
}

fn build_fatbin(root: &Path, kdir: &Path, kernels: &[PathBuf], out: &Path) {
    let nvcc = find_nvcc(root).unwrap_or_else(|| {
        panic!(
            "feature `cuda`: nvcc not found. Run `bash scripts/install-nvcc.sh` (installs the \
             pinned CUDA 13.0 nvcc into .tools/cuda), or set NVCC=/path/to/nvcc, or put nvcc on PATH."
        )
    });
    // nvcc compiles one translation unit per output file, so all kernels go into one generated
    // unit; each kernel file includes common.cuh (guarded by #pragma once).
    let unit = out.join("hcn_kernels.cu");
    let body: String = kernels
        .iter()
        .map(|k| format!("#include \"{}\"\n", k.display()))
        .collect();
    std::fs::write(&unit, body).expect("writing the generated kernel unit");
    let fatbin = out.join("hcn_kernels.fatbin");

    let mut cmd = Command::new(&nvcc);
    cmd.arg("--fatbin")
        .args(["-O3", "-std=c++17", "--Werror", "all-warnings"])
        .arg("-I")
        .arg(kdir)
        .arg("-I")
        .arg(out);
    // The pip wheels put headers at <prefix>/include (runtime, crt) and <prefix>/include/cccl;
    // nvcc.profile already points there when its target dir is empty, but a stray system profile
    // or a relocated install might not, so say it explicitly (harmless when redundant).
    if let Some(top) = nvcc.parent().and_then(Path::parent) {
        let inc = top.join("include");
        if inc.join("cuda_runtime.h").is_file() {
            cmd.arg("-I").arg(&inc);
        }
        if inc.join("cccl").is_dir() {
            cmd.arg("-isystem").arg(inc.join("cccl"));
        }
    }
    if let Some(ccbin) = std::env::var_os("NVCC_CCBIN") {
        cmd.arg("-ccbin").arg(ccbin);
    }
    for (arch, code) in GENCODES {
        cmd.arg("-gencode").arg(format!("arch={arch},code={code}"));
    }
    cmd.arg("-o").arg(&fatbin).arg(&unit);

    let line = format!("{cmd:?}");
    let output = cmd.output().unwrap_or_else(|e| {
        panic!("feature `cuda`: could not run {}: {e}", nvcc.display());
    });
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let stdout = String::from_utf8_lossy(&output.stdout);
        for l in stderr.lines().chain(stdout.lines()) {
            println!("cargo:warning=nvcc: {l}");
        }
        panic!(
            "nvcc failed ({}) compiling the CUDA kernels.\ncommand: {line}\n--- stderr ---\n{stderr}\n--- stdout ---\n{stdout}",
            output.status
        );
    }
    // The command line is kept next to the fatbin and exposed as `cuda::NVCC_COMMAND`, so a
    // report or a bug can say exactly how the embedded kernels were built.
    std::fs::write(out.join("nvcc_command.txt"), &line).expect("writing nvcc_command.txt");
}

fn build_emulation(kdir: &Path, out: &Path) {
    cc::Build::new()
        .cpp(true)
        .std("c++20")
        .file(kdir.join("emu/launch.cpp"))
        .include(kdir)
        .include(out)
        .flag("-pthread")
        // `#pragma unroll` is an nvcc pragma; g++ ignores it, which is what we want.
        .flag_if_supported("-Wno-unknown-pragmas")
        .opt_level(2)
        .warnings(true)
        .compile("hcn_cuda_emu");
}

/// `serve`: the gRPC service's protobuf types and stubs, compiled by protox (pure Rust, so no
/// system `protoc` is needed) and tonic-prost-build.
#[cfg(feature = "serve")]
fn compile_proto() {
    println!("cargo:rerun-if-changed=proto/hcn/v1/prerank.proto");
    let fds = protox::compile(["hcn/v1/prerank.proto"], ["proto"])
        .unwrap_or_else(|e| panic!("proto/hcn/v1/prerank.proto: {e}"));
    // The messages and the server, whose codec answers undecodable requests INVALID_ARGUMENT
    // (src/serve/codec.rs; prost's codec says INTERNAL)…
    tonic_prost_build::configure()
        .build_client(false)
        .codec_path("crate::serve::codec::RequestCodec")
        .compile_fds(fds.clone())
        .unwrap_or_else(|e| panic!("generating the gRPC server: {e}"));
    // …and the client, on the same messages, with prost's plain codec.
    let out = std::path::PathBuf::from(std::env::var_os("OUT_DIR").expect("set by cargo"));
    let client = out.join("client");
    std::fs::create_dir_all(&client).expect("creating OUT_DIR/client");
    tonic_prost_build::configure()
        .build_server(false)
        .extern_path(".hcn.v1", "crate::serve::pb")
        .out_dir(&client)
        .compile_fds(fds)
        .unwrap_or_else(|e| panic!("generating the gRPC client: {e}"));
}
