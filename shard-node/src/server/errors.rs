//! Group errors as etcd's gRPC statuses: the same code and the same
//! `etcdserver: ...` message, which etcd clients map back to typed errors.

use crate::error::Error;
use tonic::{Code, Status};

impl From<Error> for Status {
    fn from(e: Error) -> Self {
        let code = match &e {
            Error::Compacted | Error::FutureRev | Error::LeaseTtlTooLarge => Code::OutOfRange,
            Error::EmptyKey
            | Error::KeyNotFound
            | Error::ValueProvided
            | Error::LeaseProvided
            | Error::TooManyOps
            | Error::DuplicateKey
            | Error::RequestTooLarge
            | Error::InvalidArgument(_) => Code::InvalidArgument,
            Error::LeaseNotFound | Error::MemberNotFound => Code::NotFound,
            Error::LeaseExist
            | Error::EpochNotMatch { .. }
            | Error::PeerUrlExist
            | Error::MemberNotLearner
            | Error::LearnerNotReady
            | Error::NotLeader => Code::FailedPrecondition,
            Error::MemberBadUrls => Code::InvalidArgument,
            Error::Corrupt => Code::DataLoss,
            Error::NoLeader | Error::Timeout | Error::Stopped => Code::Unavailable,
            Error::TooManyRequests | Error::NoSpace => Code::ResourceExhausted,
            Error::Internal(_) => Code::Internal,
        };
        let mut status = Status::new(code, e.to_string());
        if let Error::EpochNotMatch { current } = e {
            // Typed for the router: it waits for this map, then routes again.
            status.metadata_mut().insert(shardmap::CURRENT_EPOCH_HEADER, current.into());
        }
        status
    }
}
