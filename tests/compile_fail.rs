//! What must not compile: Rust code cannot get a reference into memory a peer can write.
//!
//! Each file in `tests/compile-fail/` is one attempt, with the compiler's refusal recorded
//! next to it (`.stderr`; regenerate with `TRYBUILD=overwrite cargo test --test compile_fail`).

#[test]
fn no_reference_into_peer_writable_memory() {
    let cases = trybuild::TestCases::new();
    cases.compile_fail("tests/compile-fail/*.rs");
}
