//! Generates the flotilla.v1 code with a vendored protoc, so building needs
//! no system protobuf compiler.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    println!("cargo:rerun-if-changed=proto/flotilla/v1/flotilla.proto");
    let mut config = prost_build::Config::new();
    config.protoc_executable(protoc);
    // Chunk data is sliced out of one buffer per bundle and shared by every
    // stream that sends it: no copy per cluster.
    config.bytes([".flotilla.v1.BundleChunk.data"]);
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        // `AgentLink.Connect` would clash with the generated `connect`
        // constructor; clients build their own Channel instead.
        .build_transport(false)
        .compile_with_config(config, &["proto/flotilla/v1/flotilla.proto"], &["proto"])?;
    Ok(())
}
