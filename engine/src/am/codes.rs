//! Every failure inside the AM that reaches a peer gets its wire code here,
//! and only here: frame decoding errors, store failures of a commit group,
//! sessions the committer could not store, refusals of the verify queue.
//! The drivers pass typed errors up to this module; none matches on text.

use wire::{AckStatus, DecodeError, ErrorCode, ErrorMessage};

use super::store::StoreError;

/// The Error a stream is closed with when its bytes do not make a frame
/// (docs/protocol.md, 3).
pub fn frame_error(error: &DecodeError) -> ErrorMessage {
    let code = match error {
        DecodeError::FrameTooLarge { .. } => ErrorCode::FRAME_TOO_LARGE,
        DecodeError::UnsupportedVersion(_) => ErrorCode::UNSUPPORTED_VERSION,
        DecodeError::UnknownMessageType(_) => ErrorCode::UNKNOWN_MESSAGE_TYPE,
        _ => ErrorCode::MALFORMED_FRAME,
    };
    ErrorMessage::new(code, &error.to_string())
}

/// The Error for a frame whose body does not decode as its type.
pub fn body_error(error: &DecodeError) -> ErrorMessage {
    ErrorMessage::new(ErrorCode::MALFORMED_FRAME, &error.to_string())
}

/// The answer to every message of a commit group whose write failed, and
/// the `kind` label of `acct_commit_failures_total`: nothing of the group
/// is stored, and both answers ask the provider to send it again.
pub fn commit_failure(error: &StoreError) -> (AckStatus, &'static str) {
    match error {
        StoreError::OutOfSpace(_) => (AckStatus::OUT_OF_SPACE, "out_of_space"),
        StoreError::Rocks(_) | StoreError::Corrupt { .. } | StoreError::Owner(_) => (AckStatus::BUSY, "other"),
    }
}

/// Why a new session was not stored (credential issuance, the admin path).
#[derive(Debug, Clone, thiserror::Error)]
pub enum SessionNotStored {
    /// The AM is shutting down: its committer takes no more work.
    #[error("the AM is stopping")]
    Stopping,
    /// The disk is full.
    #[error("{0}")]
    OutOfSpace(String),
    /// Any other store failure.
    #[error("{0}")]
    Store(String),
}

impl From<&StoreError> for SessionNotStored {
    fn from(error: &StoreError) -> Self {
        match error {
            StoreError::OutOfSpace(_) => Self::OutOfSpace(error.to_string()),
            StoreError::Rocks(_) | StoreError::Corrupt { .. } | StoreError::Owner(_) => Self::Store(error.to_string()),
        }
    }
}

impl SessionNotStored {
    /// The Error the requester gets: each asks it to try again later.
    pub fn error_message(&self) -> ErrorMessage {
        let code = match self {
            Self::Stopping => ErrorCode::SHUTTING_DOWN,
            Self::OutOfSpace(_) => ErrorCode::OUT_OF_SPACE,
            Self::Store(_) => ErrorCode::BUSY,
        };
        ErrorMessage::new(code, &self.to_string())
    }
}

/// The `outcome` label of `acct_messages_total` for messages the verify
/// queue refused with `status` (BUSY or SHUTTING_DOWN).
pub fn queue_refusal_outcome(status: AckStatus) -> &'static str {
    if status == AckStatus::BUSY { "busy" } else { "retry" }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_not_stored_get_retryable_codes() {
        assert_eq!(
            SessionNotStored::Stopping.error_message().code,
            ErrorCode::SHUTTING_DOWN
        );
        assert_eq!(
            SessionNotStored::OutOfSpace("out of disk space: x".into())
                .error_message()
                .code,
            ErrorCode::OUT_OF_SPACE
        );
        assert_eq!(
            SessionNotStored::Store("rocksdb: x".into()).error_message().code,
            ErrorCode::BUSY
        );
    }

    #[test]
    fn frame_errors_name_their_cause() {
        let too_large = DecodeError::FrameTooLarge {
            message_type: 1,
            length: 10,
            max: 5,
        };
        assert_eq!(frame_error(&too_large).code, ErrorCode::FRAME_TOO_LARGE);
        assert_eq!(
            frame_error(&DecodeError::UnsupportedVersion(9)).code,
            ErrorCode::UNSUPPORTED_VERSION
        );
    }
}
