//! Why placement refused or failed an operation, typed so the HTTP layer
//! and the CLI map it without reading its text.

use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The request makes no sense (bad argument, impossible layout).
    Invalid,
    /// It names a group or node that does not exist.
    NotFound,
    /// It conflicts with the data (a prefix that holds keys).
    Conflict,
    /// Placement's store or a group could not be reached; try again.
    Unavailable,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct PlacementError {
    pub kind: ErrorKind,
    pub message: String,
}

impl PlacementError {
    pub fn invalid(m: impl Into<String>) -> Self {
        Self { kind: ErrorKind::Invalid, message: m.into() }
    }
    pub fn not_found(m: impl Into<String>) -> Self {
        Self { kind: ErrorKind::NotFound, message: m.into() }
    }
    pub fn conflict(m: impl Into<String>) -> Self {
        Self { kind: ErrorKind::Conflict, message: m.into() }
    }
    pub fn unavailable(m: impl Into<String>) -> Self {
        Self { kind: ErrorKind::Unavailable, message: m.into() }
    }
}

impl From<shardmap::watcher::FetchError> for PlacementError {
    fn from(e: shardmap::watcher::FetchError) -> Self {
        PlacementError::unavailable(format!("placement's store: {e}"))
    }
}

impl From<shardmap::store::UpdateError<PlacementError>> for PlacementError {
    fn from(e: shardmap::store::UpdateError<PlacementError>) -> Self {
        match e {
            shardmap::store::UpdateError::Store(f) => f.into(),
            shardmap::store::UpdateError::Refused(p) => p,
        }
    }
}

pub type Result<T> = std::result::Result<T, PlacementError>;
