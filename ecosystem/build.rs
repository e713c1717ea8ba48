//! Generates the gRPC service of proto/patterns.proto with the `protoc` that
//! protoc-bin-vendored ships, so that a fresh machine builds it without a system package.

fn main() {
    let protoc = protoc_bin_vendored::protoc_bin_path()
        .expect("protoc-bin-vendored has no protoc for this platform");
    // prost-build finds protoc through PROTOC; this sets it for this build script only.
    std::env::set_var("PROTOC", protoc);
    println!("cargo:rerun-if-changed=proto/patterns.proto");
    tonic_prost_build::configure()
        // Payloads as `Bytes`: a received payload is a view of the decode buffer, not a copy.
        .bytes(".")
        .compile_protos(&["proto/patterns.proto"], &["proto"])
        .expect("compile proto/patterns.proto");
}
