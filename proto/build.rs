fn main() -> Result<(), Box<dyn std::error::Error>> {
    // A vendored protoc, so a fresh machine needs no system package for it.
    if std::env::var_os("PROTOC").is_none() {
        std::env::set_var("PROTOC", protoc_bin_vendored::protoc_bin_path()?);
    }
    let protos = [
        "protos/etcd/mvccpb/kv.proto",
        "protos/etcd/authpb/auth.proto",
        "protos/etcd/etcdserverpb/rpc.proto",
        "protos/etcd/v3electionpb/v3election.proto",
        "protos/etcd/v3lockpb/v3lock.proto",
        "protos/tessera/command.proto",
        "protos/tessera/transport.proto",
        "protos/tessera/shard.proto",
    ];
    let descriptors = std::path::PathBuf::from(std::env::var("OUT_DIR")?).join("descriptors.bin");
    tonic_prost_build::configure().file_descriptor_set_path(&descriptors).compile_protos(&protos, &["protos"])?;
    // etcd's JSON gateway speaks grpc-gateway's mapping of these messages:
    // proto field names, int64 as strings, bytes as base64, enums by name,
    // zero values left out, unknown fields ignored.
    pbjson_build::Builder::new()
        .register_descriptors(&std::fs::read(&descriptors)?)?
        .preserve_proto_field_names()
        .ignore_unknown_fields()
        .build(&[".mvccpb", ".authpb", ".etcdserverpb", ".v3electionpb", ".v3lockpb"])?;
    for p in protos {
        println!("cargo:rerun-if-changed={p}");
    }
    Ok(())
}
