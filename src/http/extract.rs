//! Request parsing that answers with [`ApiError`]s: a JSON body of any
//! content type (curl users forget the header), with 413 past the body
//! limit, and strict query strings (an unknown parameter is a typo).

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::StatusCode;
use axum::http::request::Parts;
use serde_json::Value;

use super::error::ApiError;
use crate::reading::{InvalidInput, parse_timestamp_number, parse_timestamp_str};

/// A request body's bytes: at most the configured limit (413 past it), and
/// not empty.
pub struct BodyBytes(pub Bytes);

impl<S: Send + Sync> FromRequest<S> for BodyBytes {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        let limit = request
            .extensions()
            .get::<BodyLimit>()
            .map(|l| l.0)
            .unwrap_or(usize::MAX);
        let bytes = Bytes::from_request(request, state)
            .await
            .map_err(|rejection| {
                if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    ApiError::TooLarge { limit }
                } else {
                    ApiError::bad("body", rejection.body_text())
                }
            })?;
        if bytes.is_empty() {
            return Err(ApiError::bad("body", "a JSON body is required"));
        }
        Ok(Self(bytes))
    }
}

/// A request body parsed as JSON.
pub struct JsonBody(pub Value);

impl<S: Send + Sync> FromRequest<S> for JsonBody {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        let BodyBytes(bytes) = BodyBytes::from_request(request, state).await?;
        serde_json::from_slice(&bytes)
            .map(JsonBody)
            .map_err(not_json)
    }
}

/// The answer to a body that is not JSON.
pub fn not_json(error: serde_json::Error) -> ApiError {
    ApiError::bad("body", format!("not valid JSON: {error}"))
}

/// The configured body limit, put in request extensions for error messages.
#[derive(Clone, Copy)]
pub struct BodyLimit(pub usize);

/// Query parameters, each allowed at most once and only from `allowed`.
pub struct QueryParams(HashMap<String, String>);

impl QueryParams {
    pub fn parse(raw: Option<&str>, allowed: &[&str]) -> Result<Self, ApiError> {
        let pairs: Vec<(String, String)> = serde_urlencoded::from_str(raw.unwrap_or(""))
            .map_err(|e| ApiError::bad("query", e.to_string()))?;
        let mut params = HashMap::new();
        for (name, value) in pairs {
            if !allowed.contains(&name.as_str()) {
                return Err(ApiError::bad(
                    name,
                    format!(
                        "unknown query parameter (expected one of: {})",
                        allowed.join(", ")
                    ),
                ));
            }
            if params.insert(name.clone(), value).is_some() {
                return Err(ApiError::bad(name, "given more than once"));
            }
        }
        Ok(Self(params))
    }

    pub fn text(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    pub fn parsed<T: std::str::FromStr<Err = InvalidInput>>(
        &self,
        name: &str,
    ) -> Result<Option<T>, ApiError> {
        self.text(name)
            .map(|t| t.parse::<T>().map_err(|e| ApiError::bad(name, e.reason)))
            .transpose()
    }

    /// A limit between 1 and `max`, `default` when absent.
    pub fn limit(&self, default: usize, max: usize) -> Result<usize, ApiError> {
        match self.text("limit") {
            None => Ok(default),
            Some(text) => text
                .parse::<usize>()
                .ok()
                .filter(|n| (1..=max).contains(n))
                .ok_or_else(|| {
                    ApiError::bad("limit", format!("must be a whole number from 1 to {max}"))
                }),
        }
    }

    /// A time: RFC 3339 / ISO 8601, or epoch seconds (milliseconds above 1e11).
    pub fn time(&self, name: &str) -> Result<Option<i64>, ApiError> {
        let Some(text) = self.text(name) else {
            return Ok(None);
        };
        let parsed = match text.parse::<f64>() {
            Ok(number) => parse_timestamp_number(number),
            Err(_) => parse_timestamp_str(text),
        };
        parsed.map(Some).map_err(|e| ApiError::bad(name, e.reason))
    }
}

/// The one path parameter of a route, as text. A segment that is not valid
/// UTF-8 gets our JSON 400 instead of axum's plain-text one.
pub struct PathText(pub String);

impl<S: Send + Sync> FromRequestParts<S> for PathText {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        axum::extract::Path::<String>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Path(text)| PathText(text))
            .map_err(|rejection| ApiError::bad("path", rejection.body_text()))
    }
}
