//! How a caller tells what became of a failed call: never sent (the
//! connection was never made, so even a write may go elsewhere), refused
//! or failed with a typed error (`Error::from_status`), or unknown.

use tonic::Status;

/// Whether the call never left this process: the connection to the server
/// could not be made. Decided from the error's type (tonic keeps the
/// connect error as the status's source), never from its text.
pub fn never_sent(s: &Status) -> bool {
    let mut source = std::error::Error::source(s);
    while let Some(e) = source {
        if e.is::<tonic::ConnectError>() {
            return true;
        }
        source = e.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_refused_connection_is_never_sent_and_a_plain_status_is_not() {
        // A port nothing listens on: bind, learn it, close.
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let ch = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}")).unwrap().connect_lazy();
        let mut kv = tessera_proto::etcdserverpb::kv_client::KvClient::new(ch);
        let err = kv.range(tessera_proto::etcdserverpb::RangeRequest::default()).await.unwrap_err();
        assert!(never_sent(&err), "{err:?}");
        assert!(!never_sent(&Status::unavailable("tcp connect error: Connection refused")));
    }
}
