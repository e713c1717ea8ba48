//! The facade's runtime features, seen from an application: with no runtime feature the build
//! stops with our error naming the features; with one it builds and uses it; with several it
//! builds, keeps the plain names, and picks the default in the documented order.
//!
//! The application is the fixture crate `tests/fixtures/app` (outside the workspace). It is
//! copied under the target directory with its path dependency made absolute and the workspace's
//! `Cargo.lock` beside it, so it resolves the versions we test with and needs no network; its
//! build is cached in `<target>/tmp/fixture-app`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Mutex;
use std::{env, fs};

/// The error text of `compile_error!` in `src/lib.rs`.
const FRIENDLY_ERROR: &str = r#"enable one of the features "tokio", "async-std" or "smol""#;

/// The tests share one fixture build directory: one `cargo check` at a time.
static FIXTURE: Mutex<()> = Mutex::new(());

/// Copies the fixture to the target directory and returns the path of its manifest there.
fn fixture() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let src = root.join("tests/fixtures/app");
    let dst = Path::new(env!("CARGO_TARGET_TMPDIR")).join("fixture-app");
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
    cargo_fixture("check", args)
}

/// `cargo run` of the fixture with `args` added: its standard output, or the test fails.
fn run_fixture(args: &[&str]) -> String {
    let out = cargo_fixture("run", args);
    assert!(
        out.status.success(),
        "the fixture with {args:?} did not build or run; cargo said:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `cargo COMMAND` on the fixture with `args` added.
fn cargo_fixture(command: &str, args: &[&str]) -> Output {
    let _one_at_a_time = FIXTURE
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let manifest = fixture();
    let target = manifest.parent().expect("fixture dir").join("target");
    let cargo = env::var_os("CARGO").unwrap_or_else(|| env!("CARGO").into());
    Command::new(cargo)
        .arg(command)
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
fn one_runtime_feature_is_the_default_everywhere() {
    let out = run_fixture(&["--features", "tokio"]);
    assert_eq!(out, "outside: tokio\ninside tokio: tokio\n");
    let out = run_fixture(&["--features", "smol"]);
    assert_eq!(out, "outside: smol\n");
}

/// Cargo unifies features: a dependency may turn on a second runtime. The application still
/// builds with the plain names, and the default follows the documented order: Tokio inside a
/// Tokio runtime, otherwise async-std, then smol, then Tokio.
#[test]
fn several_runtime_features_keep_the_names_and_pick_in_order() {
    let out = run_fixture(&["--features", "tokio smol"]);
    assert_eq!(out, "outside: smol\ninside tokio: tokio\n");
    let out = run_fixture(&["--features", "tokio async-std smol"]);
    assert_eq!(out, "outside: async-std\ninside tokio: tokio\n");
}
