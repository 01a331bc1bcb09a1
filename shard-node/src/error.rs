//! Errors a group answers with: the one table every Tessera server shares
//! (`tessera_rpc::errors`), etcd's codes and texts, plus routing refusals.

pub use tessera_rpc::{Error, Refusal};

pub type Result<T> = std::result::Result<T, Error>;

impl From<crate::engine::EngineError> for Error {
    fn from(e: crate::engine::EngineError) -> Self {
        Error::Internal(e.to_string())
    }
}
