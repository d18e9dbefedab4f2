//! Generates and compiles the C++ side of the bridge. `tests/bridge_test.cc` (the C++ test driven by
//! `cargo test -p agentlm-cxx`) is compiled with it: cxx generates glue for every bridge in the file,
//! test bridge included.
fn main() {
    cxx_build::bridge("src/lib.rs")
        .file("tests/bridge_test.cc")
        .flag_if_supported("-std=c++17")
        .flag_if_supported("-Wall")
        .flag_if_supported("-Wextra")
        .compile("agentlm_cxx_bridge");
    println!("cargo:rerun-if-changed=src/lib.rs");
    println!("cargo:rerun-if-changed=tests/bridge_test.cc");
    println!("cargo:rerun-if-changed=tests/bridge_test.h");
}
