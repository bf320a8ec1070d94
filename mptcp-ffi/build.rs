//! Gives the shared library its versioned soname, so that programs linked
//! against `libmptcp.so` record `libmptcp.so.0` and keep working across
//! compatible upgrades (`install.sh` creates the symlinks).

fn main() {
    let major = std::env::var("CARGO_PKG_VERSION_MAJOR").unwrap_or_else(|_| "0".into());
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux") {
        println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libmptcp.so.{major}");
    }
    println!("cargo:rerun-if-changed=build.rs");
}
