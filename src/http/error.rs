//! `ApiError`: every way a request can fail, mapped to a status and a JSON
//! body `{"error": "<sentence>", ...details}` only here, at the edge.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::config::Role;
use crate::reading::InvalidInput;
use crate::replication::ReplicationError;
use crate::storage::StorageError;

#[derive(Debug)]
pub enum ApiError {
    /// 400, naming the field at fault.
    BadRequest(InvalidInput),
    /// 401 with `WWW-Authenticate: Bearer`.
    Unauthorized(&'static str),
    /// 403: the token's role is too low.
    Forbidden {
        required: Role,
        role: Role,
    },
    NotFound(String),
    Conflict(String),
    /// 413.
    TooLarge {
        limit: usize,
    },
    /// 400: a history answer would hold more buckets than `limit`.
    TooManyBuckets {
        limit: usize,
    },
    /// 503: not enough replicas up.
    Unavailable {
        required: usize,
        available: usize,
    },
    /// 500: a real failure on our side (a disk error), never bad input.
    Internal(String),
}

impl ApiError {
    pub fn bad(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::BadRequest(InvalidInput::new(field, reason))
    }
}

impl From<InvalidInput> for ApiError {
    fn from(e: InvalidInput) -> Self {
        Self::BadRequest(e)
    }
}

impl From<StorageError> for ApiError {
    fn from(e: StorageError) -> Self {
        Self::Internal(e.to_string())
    }
}

impl From<ReplicationError> for ApiError {
    fn from(e: ReplicationError) -> Self {
        match e {
            ReplicationError::Unavailable {
                required,
                available,
            } => Self::Unavailable {
                required,
                available,
            },
            ReplicationError::UnknownNode(node) => Self::NotFound(format!("unknown node {node:?}")),
            ReplicationError::Conflict(reason) => Self::Conflict(reason),
            ReplicationError::InvalidConfig(invalid) => Self::BadRequest(invalid),
            ReplicationError::Storage(storage) => storage.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, body): (StatusCode, Value) = match &self {
            Self::BadRequest(e) => (
                StatusCode::BAD_REQUEST,
                json!({"error": format!("invalid {}: {}", e.field, e.reason), "field": e.field, "reason": e.reason}),
            ),
            Self::Unauthorized(why) => (StatusCode::UNAUTHORIZED, json!({"error": why})),
            Self::Forbidden { required, role } => (
                StatusCode::FORBIDDEN,
                json!({"error": format!("this needs the {} role; the token has {}", required.as_str(), role.as_str()),
                       "required": required, "role": role}),
            ),
            Self::NotFound(what) => (StatusCode::NOT_FOUND, json!({"error": what})),
            Self::Conflict(what) => (StatusCode::CONFLICT, json!({"error": what})),
            Self::TooLarge { limit } => (
                StatusCode::PAYLOAD_TOO_LARGE,
                json!({"error": format!("request body is larger than {limit} bytes"), "limit": limit}),
            ),
            Self::TooManyBuckets { limit } => (
                StatusCode::BAD_REQUEST,
                json!({
                    "error": format!("the answer would hold more than {limit} buckets: choose a longer `every` or a shorter range"),
                    "field": "every",
                    "limit": limit,
                }),
            ),
            Self::Unavailable {
                required,
                available,
            } => (
                StatusCode::SERVICE_UNAVAILABLE,
                json!({"error": format!("not enough replicas are up: {required} required, {available} available"),
                       "required": required, "available": available}),
            ),
            Self::Internal(what) => {
                tracing::error!(error = %what, "request failed");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    json!({"error": format!("internal error: {what}")}),
                )
            }
        };
        let mut response = (status, Json(body)).into_response();
        if matches!(self, Self::Unauthorized(_)) {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}
