//! Compiles the exit guard (`src/py/exit_guard.c`) where it applies: Linux with glibc, whose
//! `pthread_exit` is the forced unwind it stops. Elsewhere calls into Python are plain calls.

fn main() {
    println!("cargo::rustc-check-cfg=cfg(rnq_exit_guard)");
    println!("cargo:rerun-if-changed=src/py/exit_guard.c");
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let env = std::env::var("CARGO_CFG_TARGET_ENV").unwrap_or_default();
    if os == "linux" && env == "gnu" {
        cc::Build::new()
            .file("src/py/exit_guard.c")
            .warnings(true)
            .compile("rnq_exit_guard");
        println!("cargo:rustc-cfg=rnq_exit_guard");
    }
}
