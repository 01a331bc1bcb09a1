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
    tonic_prost_build::configure().compile_protos(&protos, &["protos"])?;
    for p in protos {
        println!("cargo:rerun-if-changed={p}");
    }
    Ok(())
}
