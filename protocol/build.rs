//! Compiles `pigeon.proto` with protox (a pure-Rust protobuf compiler), so
//! building needs no `protoc` binary on the machine.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=pigeon.proto");
    let descriptors = protox::compile(["pigeon.proto"], ["."])?;
    prost_build::Config::new()
        .bytes(["."])
        .compile_fds(descriptors)?;
    Ok(())
}
