//! Generates the C header with cbindgen into OUT_DIR. The checked-in `include/hbws.h` must match
//! it (a test fails on drift); `HBWS_UPDATE_HEADER=1 cargo build` rewrites the checked-in copy.

use std::env;
use std::path::PathBuf;

fn main() {
    // The C side of src/ffi/callguard.rs: calls host callbacks so that a forced unwind
    // (pthread_exit) out of one stops before it reaches Rust frames.
    println!("cargo:rerun-if-changed=src/ffi/callguard.c");
    cc::Build::new()
        .file("src/ffi/callguard.c")
        .flag_if_supported("-fexceptions")
        .warnings(true)
        .extra_warnings(true)
        .warnings_into_errors(true)
        .compile("hbws_callguard");

    let crate_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    let out = PathBuf::from(env::var("OUT_DIR").unwrap()).join("hbws.h");
    println!("cargo:rerun-if-changed=src");
    println!("cargo:rerun-if-changed=cbindgen.toml");
    println!("cargo:rerun-if-env-changed=HBWS_UPDATE_HEADER");

    let mut config =
        cbindgen::Config::from_file(crate_dir.join("cbindgen.toml")).expect("cbindgen.toml");
    let version = env::var("CARGO_PKG_VERSION").unwrap();
    let part = |name: &str| env::var(name).unwrap();
    config.after_includes = Some(format!(
        "\n#define HB_VERSION \"{version}\"\n#define HB_VERSION_MAJOR {}\n#define HB_VERSION_MINOR {}\n#define HB_VERSION_PATCH {}\n",
        part("CARGO_PKG_VERSION_MAJOR"),
        part("CARGO_PKG_VERSION_MINOR"),
        part("CARGO_PKG_VERSION_PATCH"),
    ));
    let bindings = cbindgen::Builder::new()
        .with_crate(&crate_dir)
        .with_config(config)
        .generate()
        .expect("cbindgen could not generate the header");
    bindings.write_to_file(&out);
    if env::var_os("HBWS_UPDATE_HEADER").is_some_and(|v| v == "1") {
        bindings.write_to_file(crate_dir.join("include/hbws.h"));
    }
}
