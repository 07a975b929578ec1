//! The C side of the ABI: the checked-in header matches what cbindgen generates, its version
//! macros agree with Cargo.toml, it compiles as C11 and C++, and the C example runs against the
//! reference server through the built shared library.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use hbws_server::{Server, ServerConfig, ServerEvent};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Where cargo put libhbws.so for this test run: `cargo test` leaves it in target/<profile>/deps
/// beside the test binary (`cargo build` also copies it to target/<profile>).
fn lib_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let deps = exe.parent().unwrap();
    if deps.join("libhbws.so").exists() {
        deps.to_path_buf()
    } else {
        deps.parent().unwrap().to_path_buf()
    }
}

#[test]
fn header_has_not_drifted() {
    let checked_in = std::fs::read_to_string(root().join("include/hbws.h")).unwrap();
    assert!(
        checked_in == hbws::GENERATED_HEADER,
        "include/hbws.h differs from what cbindgen generates; run `HBWS_UPDATE_HEADER=1 cargo build` and commit it"
    );
}

#[test]
fn header_version_macros_agree_with_cargo() {
    let h = hbws::GENERATED_HEADER;
    let v = env!("CARGO_PKG_VERSION");
    assert!(h.contains(&format!("#define HB_VERSION \"{v}\"")));
    for (name, part) in [
        ("MAJOR", env!("CARGO_PKG_VERSION_MAJOR")),
        ("MINOR", env!("CARGO_PKG_VERSION_MINOR")),
        ("PATCH", env!("CARGO_PKG_VERSION_PATCH")),
    ] {
        assert!(
            h.contains(&format!("#define HB_VERSION_{name} {part}\n")),
            "HB_VERSION_{name}"
        );
    }
    let lib = unsafe { std::ffi::CStr::from_ptr(hbws::ffi::hb_version()) };
    assert_eq!(lib.to_str().unwrap(), v);
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn header_compiles_as_c_and_cpp_included_twice() {
    let dir = tempdir("hdr");
    let src = dir.join("twice.c");
    std::fs::write(
        &src,
        "#include \"hbws.h\"\n#include \"hbws.h\"\nint main(void) { return HB_OK; }\n",
    )
    .unwrap();
    let inc = root().join("include");
    run(Command::new("cc")
        .args([
            "-std=c11",
            "-Wall",
            "-Wextra",
            "-Werror",
            "-pedantic",
            "-fsyntax-only",
            "-I",
        ])
        .arg(&inc)
        .arg(&src));
    run(Command::new("c++")
        .args([
            "-std=c++11",
            "-Wall",
            "-Wextra",
            "-Werror",
            "-pedantic",
            "-fsyntax-only",
            "-x",
            "c++",
            "-I",
        ])
        .arg(&inc)
        .arg(&src));
}

fn tempdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("hbws-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn compile_example(out: &Path) {
    let lib = lib_dir();
    assert!(
        lib.join("libhbws.so").exists(),
        "no libhbws.so in {}",
        lib.display()
    );
    run(Command::new("cc")
        .args(["-std=c11", "-Wall", "-Wextra", "-Werror", "-pedantic", "-I"])
        .arg(root().join("include"))
        .arg(root().join("examples/c/basic.c"))
        .arg("-L")
        .arg(&lib)
        .arg("-lhbws")
        .arg(format!("-Wl,-rpath,{}", lib.display()))
        .arg("-o")
        .arg(out));
}

#[test]
fn c_example_runs_against_the_reference_server() {
    let dir = tempdir("cex");
    let exe = dir.join("basic");
    compile_example(&exe);
    let srv = Server::start(ServerConfig {
        ping_interval: Some(Duration::from_millis(100)),
        ..Default::default()
    })
    .unwrap();
    let out = Command::new(&exe).arg(srv.url()).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "C example failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("state OPEN"), "{stdout}");
    assert!(
        stdout.contains("message (text, 12 bytes): hello from C"),
        "{stdout}"
    );
    assert!(stdout.contains("state CLOSED (USER_CLOSE)"), "{stdout}");
    assert!(stdout.contains("closed=1 released=1 echoed=1"), "{stdout}");
    assert!(srv
        .events()
        .iter()
        .any(|e| matches!(e, ServerEvent::Text { text, .. } if text == "hello from C")));
    let _ = std::fs::remove_dir_all(dir);
}
