//! Why a queue call failed, whatever the backend: each variant says what
//! the caller does next. Backends turn their own errors into these at
//! their edge (`sqlite` maps SQLite's codes, `jetstream` the client's), so
//! nothing above the queue sees a storage engine's error type.

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// The disk, `max_disk` or the stream's reservation is full: refuse
    /// new work, retry later.
    #[error("storage is full")]
    StorageFull,
    /// The queue is closed (shutting down).
    #[error("the queue is closed")]
    Closed,
    /// The stored data is damaged. The SQLite journal stops (fail-stop) so
    /// that the next start checks and salvages it.
    #[error("journal is corrupt: {0}")]
    Corrupt(String),
    /// The storage engine failed; the operation did not happen.
    #[error("journal storage error: {0}")]
    Storage(String),
    #[error("journal i/o error: {0}")]
    Io(std::io::Error),
    /// Another process holds the storage directory.
    #[error("{0}")]
    InUse(String),
    /// The shared storage of cluster mode cannot be reached (or did not
    /// confirm in time): nothing was stored, the caller may retry.
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    /// The message, as the storage would write it, is over what the storage
    /// takes in one piece (the NATS servers' `max_payload`): it can never
    /// be stored, so a retry is pointless.
    #[error("the message is {size} bytes as stored, over the storage's limit of {limit} bytes")]
    TooLarge { size: u64, limit: u64 },
    /// The storage cannot do this (a feature the backend does not have).
    #[error("{0}")]
    Unsupported(&'static str),
}

impl From<std::io::Error> for QueueError {
    fn from(e: std::io::Error) -> Self {
        QueueError::Io(e)
    }
}

pub type Result<T> = std::result::Result<T, QueueError>;
