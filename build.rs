//! Gives the shared library a SONAME carrying the major version (`libagentlm.so.0`), so hosts linked
//! against one major version never load an incompatible one.

fn main() {
    let major = std::env::var("CARGO_PKG_VERSION_MAJOR").unwrap_or_else(|_| "0".into());
    let target_os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    if target_os == "linux" || target_os == "android" || target_os.ends_with("bsd") {
        println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libagentlm.so.{major}");
    } else if target_os == "macos" || target_os == "ios" {
        println!("cargo:rustc-cdylib-link-arg=-Wl,-install_name,@rpath/libagentlm.{major}.dylib");
    }
    println!("cargo:rerun-if-changed=build.rs");
}
