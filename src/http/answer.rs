//! Every answer of `POST /v1/upgrade` and its status code, in one place (SPEC §4's table).

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::intake::Intake;
use crate::model::Target;

/// Seconds a client should wait before retrying after a 503.
const RETRY_AFTER_SECS: &str = "30";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    Queued(Target),
    Current { build: u64, reason: String },
    Duplicate,
    Ignored(String),
    Invalid(String),
    Unauthorized(String),
    Refused(String),
    TooLarge,
    Rejected(String),
    Unavailable(String),
}

impl Answer {
    pub fn status(&self) -> StatusCode {
        match self {
            Answer::Queued(_) => StatusCode::ACCEPTED,
            Answer::Current { .. } | Answer::Duplicate | Answer::Ignored(_) => StatusCode::OK,
            Answer::Invalid(_) => StatusCode::BAD_REQUEST,
            Answer::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Answer::Refused(_) => StatusCode::CONFLICT,
            Answer::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Answer::Rejected(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Answer::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The `status` field, also the metrics label.
    pub fn label(&self) -> &'static str {
        match self {
            Answer::Queued(_) => "queued",
            Answer::Current { .. } => "current",
            Answer::Duplicate => "duplicate",
            Answer::Ignored(_) => "ignored",
            Answer::Invalid(_) | Answer::TooLarge => "invalid",
            Answer::Unauthorized(_) => "unauthorized",
            Answer::Refused(_) => "refused",
            Answer::Rejected(_) => "rejected",
            Answer::Unavailable(_) => "unavailable",
        }
    }

    fn body(&self) -> Value {
        let status = self.label();
        match self {
            Answer::Queued(t) => json!({ "status": status, "build": t.build, "path": t.path }),
            Answer::Current { build, reason } => {
                json!({ "status": status, "build": build, "reason": reason })
            }
            Answer::Duplicate => json!({ "status": status }),
            Answer::TooLarge => {
                json!({ "status": status, "reason": format!("body over {} bytes", crate::config::MAX_BODY_BYTES) })
            }
            Answer::Ignored(reason)
            | Answer::Invalid(reason)
            | Answer::Unauthorized(reason)
            | Answer::Refused(reason)
            | Answer::Rejected(reason)
            | Answer::Unavailable(reason) => json!({ "status": status, "reason": reason }),
        }
    }
}

impl From<Intake> for Answer {
    fn from(intake: Intake) -> Answer {
        match intake {
            Intake::Queued(target) => Answer::Queued(target),
            Intake::Current { build, reason } => Answer::Current { build, reason },
            Intake::Refused(reason) => Answer::Refused(reason),
            Intake::Rejected(reason) => Answer::Rejected(reason),
            Intake::Unavailable(reason) => Answer::Unavailable(reason),
        }
    }
}

/// The common shape, serialized straight from borrowed fields (no `Value` tree per answer).
#[derive(serde::Serialize)]
struct Reasoned<'a> {
    status: &'static str,
    reason: &'a str,
}

impl IntoResponse for Answer {
    fn into_response(self) -> Response {
        let reason = match &self {
            Answer::Ignored(reason)
            | Answer::Invalid(reason)
            | Answer::Unauthorized(reason)
            | Answer::Refused(reason)
            | Answer::Rejected(reason)
            | Answer::Unavailable(reason) => Some(reason.as_str()),
            _ => None,
        };
        let mut response = match reason {
            Some(reason) => {
                let body = Reasoned {
                    status: self.label(),
                    reason,
                };
                (self.status(), Json(body)).into_response()
            }
            None => (self.status(), Json(self.body())).into_response(),
        };
        if matches!(self, Answer::Unavailable(_)) {
            response.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from_static(RETRY_AFTER_SECS),
            );
        }
        response
    }
}
