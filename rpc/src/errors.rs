//! Every error a Tessera server answers with, listed once (as etcd's
//! `api/v3rpc/rpctypes/error.go`): etcd's own with etcd's gRPC code and
//! `etcdserver: ...` text, which etcd clients map back to typed errors, and
//! Tessera's routing refusals (`Refusal`), which a router acts on.
//!
//! On the wire an error is a gRPC status as etcd sends it, plus metadata
//! naming it (`tessera-error`, and the refusal's fields). `Error::from_status`
//! reads that name first, so no decision in Tessera depends on message
//! text; statuses from real etcd (no metadata) are matched against the
//! table by code and text, as etcd's clients do.

use std::fmt;
use tonic::metadata::MetadataMap;
use tonic::{Code, Status};

/// Metadata naming the error a status carries.
pub const ERROR_HEADER: &str = "tessera-error";
/// Metadata on `Refusal::EpochNotMatch`: the map epoch the call must be routed by.
pub const CURRENT_EPOCH_HEADER: &str = "tessera-current-epoch";
/// Metadata on `Refusal::NotLeader`: the leader's member id (0: unknown).
pub const LEADER_HEADER: &str = "tessera-leader";
/// Metadata on `Refusal::NotHosted`: the group the call named.
pub const REFUSED_GROUP_HEADER: &str = "tessera-refused-group";
/// Metadata on `Refusal::TxnConflict` and `Refusal::TxnAborted`: the cross-group txn.
pub const TXN_HEADER: &str = "tessera-txn";
/// Metadata on `Refusal::RevisionPassed`: the group's revision.
pub const CURRENT_REVISION_HEADER: &str = "tessera-current-revision";

macro_rules! etcd_errors {
    ($($(#[$doc:meta])* $variant:ident => $code:ident, $text:literal;)*) => {
        /// An error as a client sees it.
        #[derive(Debug, Clone, PartialEq, Eq)]
        pub enum Error {
            $($(#[$doc])* $variant,)*
            /// A request etcd would refuse with this `etcdserver:` text (validation details).
            InvalidArgument(String),
            /// A failure with no etcd equivalent (a bug, or storage failing).
            Internal(String),
            /// Tessera's routing refusals (never applied: the router acts on them).
            Refused(Refusal),
        }

        impl Error {
            /// etcd's errors that carry no data, for matching statuses without metadata.
            const TABLE: &'static [Error] = &[$(Error::$variant,)*];

            /// The gRPC code etcd answers with.
            pub fn code(&self) -> Code {
                match self {
                    $(Error::$variant => Code::$code,)*
                    Error::InvalidArgument(_) => Code::InvalidArgument,
                    Error::Internal(_) => Code::Internal,
                    Error::Refused(r) => r.code(),
                }
            }

            /// The stable name sent as `tessera-error` metadata.
            fn name(&self) -> &'static str {
                match self {
                    $(Error::$variant => stringify!($variant),)*
                    Error::InvalidArgument(_) => "InvalidArgument",
                    Error::Internal(_) => "Internal",
                    Error::Refused(r) => r.name(),
                }
            }

            fn text(&self) -> String {
                match self {
                    $(Error::$variant => $text.to_string(),)*
                    Error::InvalidArgument(m) | Error::Internal(m) => format!("etcdserver: {m}"),
                    Error::Refused(r) => r.to_string(),
                }
            }
        }
    };
}

etcd_errors! {
    EmptyKey => InvalidArgument, "etcdserver: key is not provided";
    KeyNotFound => InvalidArgument, "etcdserver: key not found";
    ValueProvided => InvalidArgument, "etcdserver: value is provided";
    LeaseProvided => InvalidArgument, "etcdserver: lease is provided";
    TooManyOps => InvalidArgument, "etcdserver: too many operations in txn request";
    DuplicateKey => InvalidArgument, "etcdserver: duplicate key given in txn request";
    InvalidSortOption => InvalidArgument, "etcdserver: invalid sort option";
    Compacted => OutOfRange, "etcdserver: mvcc: required revision has been compacted";
    FutureRev => OutOfRange, "etcdserver: mvcc: required revision is a future revision";
    NoSpace => ResourceExhausted, "etcdserver: mvcc: database space exceeded";
    LeaseNotFound => NotFound, "etcdserver: requested lease not found";
    LeaseExist => FailedPrecondition, "etcdserver: lease already exists";
    LeaseTtlTooLarge => OutOfRange, "etcdserver: too large lease TTL";
    WatchCanceled => Cancelled, "etcdserver: watch canceled";
    MemberExist => FailedPrecondition, "etcdserver: member ID already exist";
    PeerUrlExist => FailedPrecondition, "etcdserver: Peer URLs already exists";
    MemberNotEnoughStarted => FailedPrecondition, "etcdserver: re-configuration failed due to not enough started members";
    MemberBadUrls => InvalidArgument, "etcdserver: given member URLs are invalid";
    MemberNotFound => NotFound, "etcdserver: member not found";
    MemberNotLearner => FailedPrecondition, "etcdserver: can only promote a learner member";
    LearnerNotReady => FailedPrecondition, "etcdserver: can only promote a learner member which is in sync with leader";
    TooManyLearners => FailedPrecondition, "etcdserver: too many learner members in cluster";
    ClusterIdMismatch => FailedPrecondition, "etcdserver: cluster ID mismatch";
    RequestTooLarge => InvalidArgument, "etcdserver: request is too large";
    TooManyRequests => ResourceExhausted, "etcdserver: too many requests";
    RootUserNotExist => FailedPrecondition, "etcdserver: root user does not exist";
    RootRoleNotExist => FailedPrecondition, "etcdserver: root user does not have root role";
    UserAlreadyExist => FailedPrecondition, "etcdserver: user name already exists";
    UserEmpty => InvalidArgument, "etcdserver: user name is empty";
    UserNotFound => FailedPrecondition, "etcdserver: user name not found";
    RoleAlreadyExist => FailedPrecondition, "etcdserver: role name already exists";
    RoleNotFound => FailedPrecondition, "etcdserver: role name not found";
    RoleEmpty => InvalidArgument, "etcdserver: role name is empty";
    AuthFailed => InvalidArgument, "etcdserver: authentication failed, invalid user ID or password";
    PermissionNotGiven => InvalidArgument, "etcdserver: permission not given";
    PermissionDenied => PermissionDenied, "etcdserver: permission denied";
    RoleNotGranted => FailedPrecondition, "etcdserver: role is not granted to the user";
    PermissionNotGranted => FailedPrecondition, "etcdserver: permission is not granted to the role";
    AuthNotEnabled => FailedPrecondition, "etcdserver: authentication is not enabled";
    InvalidAuthToken => Unauthenticated, "etcdserver: invalid auth token";
    InvalidAuthMgmt => InvalidArgument, "etcdserver: invalid auth management";
    AuthOldRevision => InvalidArgument, "etcdserver: revision of auth store is old";
    NoLeader => Unavailable, "etcdserver: no leader";
    NotLeader => FailedPrecondition, "etcdserver: not leader";
    LeaderChanged => Unavailable, "etcdserver: leader changed";
    NotCapable => Unavailable, "etcdserver: not capable";
    Stopped => Unavailable, "etcdserver: server stopped";
    Timeout => Unavailable, "etcdserver: request timed out";
    TimeoutDueToLeaderFail => Unavailable, "etcdserver: request timed out, possibly due to previous leader failure";
    TimeoutDueToConnectionLost => Unavailable, "etcdserver: request timed out, possibly due to connection lost";
    Unhealthy => Unavailable, "etcdserver: unhealthy cluster";
    Corrupt => DataLoss, "etcdserver: corrupt cluster";
    NotSupportedForLearner => Unavailable, "etcdserver: rpc not supported for learner";
    BadLeaderTransferee => FailedPrecondition, "etcdserver: bad leader transferee";
    Canceled => Cancelled, "etcdserver: request canceled";
    DeadlineExceeded => DeadlineExceeded, "etcdserver: context deadline exceeded";
    // etcd's election service returns these as plain Go errors: gRPC's
    // Unknown (code 2), in 3.4 and 3.6 alike (its e2e tests expect 2).
    ElectionNoLeader => Unknown, "election: no leader";
    ElectionNotLeader => Unknown, "election: not leader";
    ElectionMissingLeader => Unknown, "\"leader\" field must be provided";
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text())
    }
}

impl std::error::Error for Error {}

impl From<Refusal> for Error {
    fn from(r: Refusal) -> Self {
        Error::Refused(r)
    }
}

impl From<Error> for Status {
    fn from(e: Error) -> Self {
        let mut s = Status::new(e.code(), e.text());
        let md = s.metadata_mut();
        md.insert(ERROR_HEADER, e.name().parse().expect("ascii name"));
        if let Error::Refused(r) = &e {
            r.write(md);
        }
        s
    }
}

impl Error {
    /// The error a status stands for: by the `tessera-error` metadata a
    /// Tessera server sends, else by etcd's code and text. None for a
    /// status that is neither (a transport failure, an unknown server).
    pub fn from_status(s: &Status) -> Option<Error> {
        let md = s.metadata();
        if let Some(name) = md.get(ERROR_HEADER).and_then(|v| v.to_str().ok()) {
            return Self::from_name(name, s, md);
        }
        let text = s.message();
        Self::TABLE.iter().find(|e| e.code() == s.code() && e.text() == text).cloned()
    }

    fn from_name(name: &str, s: &Status, md: &MetadataMap) -> Option<Error> {
        if let Some(e) = Self::TABLE.iter().find(|e| e.name() == name) {
            return Some(e.clone());
        }
        let detail = || s.message().strip_prefix("etcdserver: ").unwrap_or(s.message()).to_string();
        match name {
            "InvalidArgument" => Some(Error::InvalidArgument(detail())),
            "Internal" => Some(Error::Internal(detail())),
            _ => Refusal::read(name, md).map(Error::Refused),
        }
    }

    /// Whether the same call may succeed if sent again (to this group or
    /// another replica of it) without having taken effect twice: the
    /// request surely was not applied.
    pub fn never_applied(&self) -> bool {
        matches!(
            self,
            Error::Refused(_) | Error::NoLeader | Error::NotLeader | Error::TooManyRequests | Error::Stopped | Error::NotCapable
        )
    }
}

/// Tessera's refusals: the call was not applied, and says why, so a router
/// routes it again instead of failing it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The node called does not host a replica of `group`.
    NotHosted { group: u64 },
    /// The call was routed by a shard map older than `current`, and touches
    /// a prefix this group is handing to another (a fence): route it again
    /// by that map.
    EpochNotMatch { current: u64 },
    /// Only the group's leader answers this; `leader` is its member id (0: none known).
    NotLeader { leader: u64 },
    /// A cross-group txn's prepare met another prepared txn `holder` on the
    /// group: the coordinator aborts its txn and tries again.
    TxnConflict { holder: i64 },
    /// Cross-group txn `txn` was aborted here (by its coordinator, or by a
    /// router finishing it for a lost one): its prepare or commit came late.
    TxnAborted { txn: i64 },
    /// The call touches a prefix in the cutover of a move, routed by a map
    /// that may or may not have moved it yet: try again shortly (nodes
    /// wait for the cutover themselves; this leaves a node only when it
    /// took longer than the request's time).
    PrefixMoving,
    /// The write's revision (its hint from the federation's oracle) was
    /// passed by the group before the write was applied (another write or
    /// a read's raise came first in the log): it took no revision, so it is
    /// proposed again with a fresh one. Taking the next revision instead
    /// could take one the oracle had handed to a write of another group.
    RevisionPassed { current: i64 },
}

impl Refusal {
    fn code(&self) -> Code {
        match self {
            Refusal::NotHosted { .. } | Refusal::NotLeader { .. } => Code::Unavailable,
            Refusal::EpochNotMatch { .. } => Code::FailedPrecondition,
            Refusal::TxnConflict { .. } | Refusal::TxnAborted { .. } => Code::Aborted,
            Refusal::PrefixMoving | Refusal::RevisionPassed { .. } => Code::Unavailable,
        }
    }

    fn name(&self) -> &'static str {
        match self {
            Refusal::NotHosted { .. } => "NotHosted",
            Refusal::EpochNotMatch { .. } => "EpochNotMatch",
            Refusal::NotLeader { .. } => "NotLeaderOfGroup",
            Refusal::TxnConflict { .. } => "TxnConflict",
            Refusal::TxnAborted { .. } => "TxnAborted",
            Refusal::PrefixMoving => "PrefixMoving",
            Refusal::RevisionPassed { .. } => "RevisionPassed",
        }
    }

    fn write(&self, md: &mut MetadataMap) {
        match self {
            Refusal::NotHosted { group } => md.insert(REFUSED_GROUP_HEADER, (*group).into()),
            Refusal::EpochNotMatch { current } => md.insert(CURRENT_EPOCH_HEADER, (*current).into()),
            Refusal::NotLeader { leader } => md.insert(LEADER_HEADER, (*leader).into()),
            Refusal::TxnConflict { holder: txn } | Refusal::TxnAborted { txn } => md.insert(TXN_HEADER, (*txn).into()),
            Refusal::RevisionPassed { current } => md.insert(CURRENT_REVISION_HEADER, (*current).into()),
            Refusal::PrefixMoving => return,
        };
    }

    fn read(name: &str, md: &MetadataMap) -> Option<Refusal> {
        let num = |h: &str| md.get(h)?.to_str().ok()?.parse::<u64>().ok();
        let txn = || md.get(TXN_HEADER)?.to_str().ok()?.parse::<i64>().ok();
        match name {
            "NotHosted" => Some(Refusal::NotHosted { group: num(REFUSED_GROUP_HEADER)? }),
            "EpochNotMatch" => Some(Refusal::EpochNotMatch { current: num(CURRENT_EPOCH_HEADER)? }),
            "NotLeaderOfGroup" => Some(Refusal::NotLeader { leader: num(LEADER_HEADER).unwrap_or(0) }),
            "TxnConflict" => Some(Refusal::TxnConflict { holder: txn()? }),
            "TxnAborted" => Some(Refusal::TxnAborted { txn: txn()? }),
            "PrefixMoving" => Some(Refusal::PrefixMoving),
            "RevisionPassed" => {
                Some(Refusal::RevisionPassed { current: md.get(CURRENT_REVISION_HEADER)?.to_str().ok()?.parse().ok()? })
            }
            _ => None,
        }
    }

    /// The refusal a status carries, if any.
    pub fn from_status(s: &Status) -> Option<Refusal> {
        match Error::from_status(s)? {
            Error::Refused(r) => Some(r),
            _ => None,
        }
    }

    /// A watch ended by a fence says so in its cancel reason (a stream
    /// message carries no metadata): the same text as the status, parsed
    /// back here, next to where it is written.
    pub fn from_cancel_reason(reason: &str) -> Option<Refusal> {
        let current = reason.strip_prefix(EPOCH_NOT_MATCH)?.strip_suffix(')')?.parse().ok()?;
        Some(Refusal::EpochNotMatch { current })
    }
}

const EPOCH_NOT_MATCH: &str = "tessera: epoch not match (current ";

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::NotHosted { group } => write!(f, "tessera: group {group} is not hosted here"),
            Refusal::EpochNotMatch { current } => write!(f, "{EPOCH_NOT_MATCH}{current})"),
            Refusal::NotLeader { leader } => write!(f, "tessera: not the group's leader (leader {leader:x})"),
            Refusal::TxnConflict { holder } => write!(f, "tessera: the group holds another cross-group txn ({holder})"),
            Refusal::TxnAborted { txn } => write!(f, "tessera: cross-group txn {txn} was aborted"),
            Refusal::PrefixMoving => write!(f, "tessera: the prefix is moving to another group; try again"),
            Refusal::RevisionPassed { current } => {
                write!(f, "tessera: the group passed the write's revision (at {current}); try again")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_round_trips_through_a_status() {
        let mut all: Vec<Error> = Error::TABLE.to_vec();
        all.extend([
            Error::InvalidArgument("conf change rejected: x".into()),
            Error::Internal("disk on fire".into()),
            Error::Refused(Refusal::NotHosted { group: 7 }),
            Error::Refused(Refusal::EpochNotMatch { current: 12 }),
            Error::Refused(Refusal::NotLeader { leader: 0xabc }),
            Error::Refused(Refusal::TxnConflict { holder: 1 << 40 }),
            Error::Refused(Refusal::TxnAborted { txn: 17 }),
            Error::Refused(Refusal::PrefixMoving),
        ]);
        for e in all {
            let s = Status::from(e.clone());
            assert_eq!(Error::from_status(&s), Some(e.clone()), "{e}");
        }
    }

    #[test]
    fn names_and_texts_are_unique() {
        for (i, a) in Error::TABLE.iter().enumerate() {
            for b in &Error::TABLE[i + 1..] {
                assert_ne!(a.name(), b.name());
                assert_ne!(a.text(), b.text());
            }
        }
    }

    #[test]
    fn statuses_from_real_etcd_match_by_code_and_text() {
        let s = Status::new(Code::OutOfRange, "etcdserver: mvcc: required revision has been compacted");
        assert_eq!(Error::from_status(&s), Some(Error::Compacted));
        // Same text, other code: not etcd's error.
        assert_eq!(Error::from_status(&Status::new(Code::Internal, s.message())), None);
        assert_eq!(Error::from_status(&Status::unavailable("tcp connect error")), None);
    }

    #[test]
    fn the_name_decides_not_the_text() {
        let mut s = Status::new(Code::Unavailable, "reworded, whatever it says");
        s.metadata_mut().insert(ERROR_HEADER, "LeaderChanged".parse().unwrap());
        assert_eq!(Error::from_status(&s), Some(Error::LeaderChanged));
    }

    #[test]
    fn a_fence_cancel_reason_parses_back() {
        let reason = Refusal::EpochNotMatch { current: 42 }.to_string();
        assert_eq!(Refusal::from_cancel_reason(&reason), Some(Refusal::EpochNotMatch { current: 42 }));
        assert_eq!(Refusal::from_cancel_reason("etcdserver: mvcc: required revision has been compacted"), None);
    }
}
