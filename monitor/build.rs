//! Compiles the C kernel programs with clang and generates their Rust record types from the shared header.

use std::{env, path::PathBuf, process::Command};

fn find_tool(env_var: &str, candidates: &[&str]) -> String {
    if let Ok(v) = env::var(env_var) {
        return v;
    }
    for c in candidates {
        if Command::new(c)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
        {
            return (*c).to_string();
        }
    }
    panic!(
        "none of {candidates:?} found: install clang and llvm (`cargo xtask deps` does), or set {env_var}"
    );
}

fn main() {
    let root = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap()).join("../monitor-ebpf");
    let include = root.join("include");
    let src = root.join("src/nhiwatch.bpf.c");
    let header = include.join("nhiwatch.h");
    let out = PathBuf::from(env::var("OUT_DIR").unwrap());
    for p in [&src, &header, &include.join("vmlinux.h")] {
        println!("cargo:rerun-if-changed={}", p.display());
    }
    println!("cargo:rerun-if-env-changed=NHIWATCH_CLANG");

    let arch = match env::var("CARGO_CFG_TARGET_ARCH").unwrap().as_str() {
        "x86_64" => "x86",
        "aarch64" => "arm64",
        other => panic!("unsupported target architecture {other}"),
    };
    let clang = find_tool("NHIWATCH_CLANG", &["clang-19", "clang"]);
    let obj = out.join("nhiwatch.bpf.o");
    let status = Command::new(&clang)
        .args(["-g", "-O2", "-target", "bpf", "-Wall", "-Werror"])
        .arg(format!("-D__TARGET_ARCH_{arch}"))
        .arg("-I")
        .arg(&include)
        .arg("-c")
        .arg(&src)
        .arg("-o")
        .arg(&obj)
        .status()
        .unwrap_or_else(|e| panic!("running {clang}: {e}"));
    assert!(
        status.success(),
        "{clang} failed to compile {}",
        src.display()
    );

    // Debug info goes, BTF and .BTF.ext stay: CO-RE relocations live in .BTF.ext.
    let strip = find_tool("NHIWATCH_LLVM_STRIP", &["llvm-strip-19", "llvm-strip"]);
    let status = Command::new(&strip)
        .arg("-g")
        .arg(&obj)
        .status()
        .unwrap_or_else(|e| panic!("running {strip}: {e}"));
    assert!(status.success(), "{strip} failed");

    bindgen::Builder::default()
        .header(header.to_string_lossy())
        .allowlist_type("nw_.*")
        .allowlist_var("NW_.*")
        .prepend_enum_name(false)
        .derive_default(true)
        .derive_debug(true)
        .layout_tests(true)
        .generate()
        .expect("bindgen on nhiwatch.h")
        .write_to_file(out.join("abi.rs"))
        .expect("writing abi.rs");
}
