//! Wire protocols: etcd's v3 API (same packages, names and field numbers as
//! etcd, so every etcd client works) and Tessera's internal protocols.
//! Generated code: clippy's lints are for the code we write.
#![allow(clippy::all)]

pub mod mvccpb {
    tonic::include_proto!("mvccpb");
    include!(concat!(env!("OUT_DIR"), "/mvccpb.serde.rs"));
}
pub mod authpb {
    tonic::include_proto!("authpb");
    include!(concat!(env!("OUT_DIR"), "/authpb.serde.rs"));
}
pub mod etcdserverpb {
    tonic::include_proto!("etcdserverpb");
    include!(concat!(env!("OUT_DIR"), "/etcdserverpb.serde.rs"));
}
pub mod v3electionpb {
    tonic::include_proto!("v3electionpb");
    include!(concat!(env!("OUT_DIR"), "/v3electionpb.serde.rs"));
}
pub mod v3lockpb {
    tonic::include_proto!("v3lockpb");
    include!(concat!(env!("OUT_DIR"), "/v3lockpb.serde.rs"));
}
pub mod tessera {
    pub mod command {
        tonic::include_proto!("tessera.command");
    }
    pub mod transport {
        tonic::include_proto!("tessera.transport");
    }
    pub mod shard {
        tonic::include_proto!("tessera.shard");
    }
}
