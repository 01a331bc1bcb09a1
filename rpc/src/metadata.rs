//! What a call to a shard-node carries besides etcd's message: the group
//! it is for and the shard-map epoch it was routed by. A call without them
//! (any etcd client talking to a node directly) is for the standalone group
//! 0, routed by no map. (Revisions need nothing here: every group takes
//! them from the revision oracle.) A write a router checked against the
//! federation's auth store also carries who asked and the auth revision it
//! was checked at (`Forwarded`), so the group logs the caller and refuses
//! the write if an auth change reached it first.

use base64::Engine as _;
use http::HeaderMap;
use prost::Message;
use tessera_proto::tessera::command::Forwarded;

/// The group a call is for.
pub const GROUP_HEADER: &str = "tessera-group";
/// The shard-map epoch the router routed the call by.
pub const EPOCH_HEADER: &str = "tessera-epoch";

/// The caller of a write a router checked (a `Forwarded`, encoded): binary
/// metadata, as a user name may be any string.
pub const FORWARDED_HEADER: &str = "tessera-forwarded-bin";

/// Marks `req` as made for `caller`.
pub fn forward<T>(req: &mut tonic::Request<T>, caller: &Forwarded) {
    let value = tonic::metadata::MetadataValue::from_bytes(&caller.encode_to_vec());
    req.metadata_mut().insert_bin(FORWARDED_HEADER, value);
}

/// A `tessera-forwarded-bin` value that does not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("tessera: bad tessera-forwarded-bin metadata")]
pub struct BadForwarded;

/// The caller a router forwarded with an incoming call, if any.
pub fn forwarded(h: &HeaderMap) -> Result<Option<Forwarded>, BadForwarded> {
    let Some(value) = h.get(FORWARDED_HEADER) else { return Ok(None) };
    let text = value.to_str().map_err(|_| BadForwarded)?;
    // gRPC's binary metadata is base64, padded or not.
    let bytes = base64::engine::general_purpose::STANDARD_NO_PAD.decode(text.trim_end_matches('=')).map_err(|_| BadForwarded)?;
    Forwarded::decode(bytes.as_slice()).map(Some).map_err(|_| BadForwarded)
}

/// A call to one group on a shard-node (client or peer port).
pub fn group_request<T>(group: u64, msg: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut().insert(GROUP_HEADER, group.into());
    r
}

/// The routing metadata of an incoming call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Routed {
    /// None: the call names no group (a plain etcd client).
    pub group: Option<u64>,
    /// 0: not routed by a map.
    pub epoch: u64,
}

/// A `tessera-group` value that is not a number.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("tessera: bad tessera-group metadata")]
pub struct BadGroup;

impl Routed {
    pub fn from_headers(h: &HeaderMap) -> Result<Self, BadGroup> {
        let text = |name: &str| h.get(name).and_then(|v| v.to_str().ok());
        let group = match h.get(GROUP_HEADER) {
            None => None,
            Some(v) => Some(v.to_str().ok().and_then(|s| s.parse().ok()).ok_or(BadGroup)?),
        };
        Ok(Routed { group, epoch: text(EPOCH_HEADER).and_then(|s| s.parse().ok()).unwrap_or(0) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_of_a_routed_call_parse_back() {
        let mut r = group_request(3, ());
        r.metadata_mut().insert(EPOCH_HEADER, 9u64.into());
        let h = r.into_parts().0.into_headers();
        assert_eq!(Routed::from_headers(&h), Ok(Routed { group: Some(3), epoch: 9 }));
        assert_eq!(Routed::from_headers(&HeaderMap::new()), Ok(Routed::default()));
        let mut bad = HeaderMap::new();
        bad.insert(GROUP_HEADER, "x".parse().unwrap());
        assert_eq!(Routed::from_headers(&bad), Err(BadGroup));
    }

    #[test]
    fn a_forwarded_caller_reads_back_whatever_its_name() {
        let caller = Forwarded { user: "réka \n/ü".into(), auth_revision: 42 };
        let mut r = group_request(1, ());
        forward(&mut r, &caller);
        let h = r.into_parts().0.into_headers();
        assert_eq!(forwarded(&h), Ok(Some(caller)));
        assert_eq!(forwarded(&HeaderMap::new()), Ok(None));
        let mut bad = HeaderMap::new();
        bad.insert(FORWARDED_HEADER, "***".parse().unwrap());
        assert_eq!(forwarded(&bad), Err(BadForwarded));
    }
}
