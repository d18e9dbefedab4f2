//! `include/agentlm.h` is generated from `src/ffi` by cbindgen (pinned in Cargo.toml) and committed.
//! This test regenerates it and fails on any difference; `AGENTLM_UPDATE_HEADER=1` rewrites it.

use std::path::Path;

#[test]
fn header_is_generated_from_the_ffi_module() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let config = cbindgen::Config::from_file(root.join("cbindgen.toml")).expect("cbindgen.toml");
    let mut generated = Vec::new();
    cbindgen::Builder::new().with_config(config).with_src(root.join("src/ffi/mod.rs")).generate().expect("cbindgen").write(&mut generated);
    let path = root.join("include/agentlm.h");
    if std::env::var_os("AGENTLM_UPDATE_HEADER").is_some() {
        std::fs::write(&path, &generated).unwrap();
    }
    let committed = std::fs::read(&path).unwrap_or_default();
    assert!(committed == generated, "include/agentlm.h is stale: regenerate with AGENTLM_UPDATE_HEADER=1 cargo test --test header");
}

#[test]
fn header_version_macros_match_cargo_toml() {
    let h = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("include/agentlm.h")).unwrap();
    for (name, want) in [
        ("AGENTLM_VERSION_MAJOR", env!("CARGO_PKG_VERSION_MAJOR")),
        ("AGENTLM_VERSION_MINOR", env!("CARGO_PKG_VERSION_MINOR")),
        ("AGENTLM_VERSION_PATCH", env!("CARGO_PKG_VERSION_PATCH")),
    ] {
        let line = h.lines().find(|l| l.starts_with(&format!("#define {name} "))).unwrap_or_else(|| panic!("{name} missing"));
        assert_eq!(line.split_whitespace().nth(2), Some(want), "{line}");
    }
}
