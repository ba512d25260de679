//! Link flags of the plugin: `-z nodelete` keeps the library mapped after `dlclose`, so a
//! late reference into it (a thread, a logger) can never jump into unmapped code.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rustc-cdylib-link-arg=-Wl,-z,nodelete");
}
