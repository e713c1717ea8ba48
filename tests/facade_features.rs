//! The facade's runtime features, seen from an application: with no runtime feature the build
//! stops with our error naming the features; with one it builds.
//!
//! The application is the fixture crate `tests/fixtures/no-runtime` (outside the workspace). It is
//! copied under the target directory with its path dependency made absolute and the workspace's
//! `Cargo.lock` beside it, so it resolves the versions we test with and needs no network; its
//! build is cached in `<target>/tmp/fixture-no-runtime`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Mutex;
use std::{env, fs};

/// The error text of `compile_error!` in `src/lib.rs`.
const FRIENDLY_ERROR: &str = r#"enable exactly one of the features "tokio", "async-std" or "smol""#;

/// Both tests share one fixture build directory: one `cargo check` at a time.
static FIXTURE: Mutex<()> = Mutex::new(());

/// Copies the fixture to the target directory and returns the path of its manifest there.
fn fixture() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let src = root.join("tests/fixtures/no-runtime");
    let dst = Path::new(env!("CARGO_TARGET_TMPDIR")).join("fixture-no-runtime");
    fs::create_dir_all(dst.join("src")).expect("create the fixture directory");

    let manifest = fs::read_to_string(src.join("Cargo.toml")).expect("read the fixture manifest");
    let relative = r#"path = "../../..""#;
    assert!(
        manifest.contains(relative),
        "fixture manifest lost its `{relative}`"
    );
    let absolute = format!("path = {:?}", root.to_str().expect("UTF-8 workspace path"));
    write_if_changed(
        &dst.join("Cargo.toml"),
        &manifest.replace(relative, &absolute),
    );
    let main = fs::read_to_string(src.join("src/main.rs")).expect("read the fixture main.rs");
    write_if_changed(&dst.join("src/main.rs"), &main);
    let lock = fs::read_to_string(root.join("Cargo.lock")).expect("read the workspace Cargo.lock");
    write_if_changed(&dst.join("Cargo.lock"), &lock);
    dst.join("Cargo.toml")
}

/// Writes only on change, so that cargo's fingerprints keep the previous build.
fn write_if_changed(path: &Path, text: &str) {
    if fs::read_to_string(path).ok().as_deref() != Some(text) {
        fs::write(path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    }
}

/// `cargo check` of the fixture with `args` added.
fn check_fixture(args: &[&str]) -> Output {
    let _one_at_a_time = FIXTURE
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let manifest = fixture();
    let target = manifest.parent().expect("fixture dir").join("target");
    let cargo = env::var_os("CARGO").unwrap_or_else(|| env!("CARGO").into());
    Command::new(cargo)
        .arg("check")
        .arg("--manifest-path")
        .arg(&manifest)
        .arg("--target-dir")
        .arg(&target)
        .args(["--color", "never"])
        .args(args)
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("CARGO_BUILD_TARGET_DIR")
        .output()
        .expect("run cargo check on the fixture")
}

#[test]
fn no_runtime_feature_fails_with_the_friendly_error() {
    let out = check_fixture(&[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "the facade built with no runtime feature; cargo said:\n{stderr}"
    );
    assert!(
        stderr.contains(FRIENDLY_ERROR),
        "the build failed, but without the error that names the features; cargo said:\n{stderr}"
    );
}

#[test]
fn one_runtime_feature_builds() {
    let out = check_fixture(&["--features", "tokio"]);
    assert!(
        out.status.success(),
        "the facade with the tokio feature did not build; cargo said:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
