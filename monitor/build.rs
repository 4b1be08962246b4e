//! Compiles each kernel sensor (monitor-ebpf/src/*.bpf.c) with clang, links them into one BPF object, and generates their Rust record types from the shared header.

use std::{
    env, fs,
    path::{Path, PathBuf},
    process::Command,
};

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
        "none of {candidates:?} found: install clang, llvm and bpftool (`cargo xtask deps` does), or set {env_var}"
    );
}

/// Files of `dir` whose names end with `suffix`, sorted so the link order is stable.
fn files_ending(dir: &Path, suffix: &str) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.to_string_lossy().ends_with(suffix))
        .collect();
    out.sort();
    out
}

fn run(cmd: &mut Command, what: &str) {
    let status = cmd
        .status()
        .unwrap_or_else(|e| panic!("running {what}: {e}"));
    assert!(status.success(), "{what} failed");
}

fn main() {
    let root = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap()).join("../monitor-ebpf");
    let include = root.join("include");
    let src = root.join("src");
    let header = include.join("nhiwatch.h");
    let out = PathBuf::from(env::var("OUT_DIR").unwrap());
    // One file per sensor: a new file is compiled and linked without touching this script
    // (the object test then insists the Rust sensor table lists its programs).
    let sensors = files_ending(&src, ".bpf.c");
    assert!(!sensors.is_empty(), "no *.bpf.c in {}", src.display());
    // The directories catch files added or removed; the files catch edits.
    println!("cargo:rerun-if-changed={}", src.display());
    println!("cargo:rerun-if-changed={}", include.display());
    for p in sensors.iter().chain(&files_ending(&include, ".h")) {
        println!("cargo:rerun-if-changed={}", p.display());
    }
    for var in ["NHIWATCH_CLANG", "NHIWATCH_LLVM_STRIP", "NHIWATCH_BPFTOOL"] {
        println!("cargo:rerun-if-env-changed={var}");
    }

    let arch = match env::var("CARGO_CFG_TARGET_ARCH").unwrap().as_str() {
        "x86_64" => "x86",
        "aarch64" => "arm64",
        other => panic!("unsupported target architecture {other}"),
    };
    let clang = find_tool("NHIWATCH_CLANG", &["clang-19", "clang"]);
    let parts = out.join("sensors");
    fs::create_dir_all(&parts).expect("creating the objects directory");
    // Every sensor parses vmlinux.h: compile them side by side.
    let jobs: Vec<(PathBuf, PathBuf, std::process::Child)> = sensors
        .iter()
        .map(|c| {
            let name = c.file_name().unwrap().to_string_lossy();
            let obj = parts.join(format!("{}.o", name.trim_end_matches(".c")));
            let child = Command::new(&clang)
                .args(["-g", "-O2", "-target", "bpf", "-Wall", "-Werror"])
                .arg(format!("-D__TARGET_ARCH_{arch}"))
                .arg("-I")
                .arg(&include)
                .arg("-c")
                .arg(c)
                .arg("-o")
                .arg(&obj)
                .spawn()
                .unwrap_or_else(|e| panic!("running {clang}: {e}"));
            (c.clone(), obj, child)
        })
        .collect();
    let mut objects = Vec::new();
    for (c, obj, mut child) in jobs {
        let status = child.wait().expect("waiting for clang");
        assert!(
            status.success(),
            "{clang} failed to compile {}",
            c.display()
        );
        objects.push(obj);
    }

    // libbpf's static linker merges the sensors into one object: maps defined in more than one
    // file (include/maps.h) become one map, and CO-RE relocations (.BTF.ext) are carried over.
    let bpftool = find_tool("NHIWATCH_BPFTOOL", &["bpftool", "/usr/sbin/bpftool"]);
    let obj = out.join("nhiwatch.bpf.o");
    run(
        Command::new(&bpftool)
            .args(["gen", "object"])
            .arg(&obj)
            .args(&objects),
        &format!("{bpftool} gen object"),
    );

    // Debug info goes, BTF and .BTF.ext stay: CO-RE relocations live in .BTF.ext.
    let strip = find_tool("NHIWATCH_LLVM_STRIP", &["llvm-strip-19", "llvm-strip"]);
    run(Command::new(&strip).arg("-g").arg(&obj), &strip);

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
