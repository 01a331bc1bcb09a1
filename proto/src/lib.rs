//! Wire protocols: etcd's v3 API (same packages, names and field numbers as
//! etcd, so every etcd client works) and Tessera's internal protocols.

pub mod mvccpb {
    tonic::include_proto!("mvccpb");
}
pub mod authpb {
    tonic::include_proto!("authpb");
}
pub mod etcdserverpb {
    tonic::include_proto!("etcdserverpb");
}
pub mod v3electionpb {
    tonic::include_proto!("v3electionpb");
}
pub mod v3lockpb {
    tonic::include_proto!("v3lockpb");
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
