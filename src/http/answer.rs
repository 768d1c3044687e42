//! Every answer of `POST /v1/upgrade` and its status code, in one place (SPEC §4's table).

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::hydra::HydraError;
use crate::intake::Intake;
use crate::model::Target;

/// Seconds a client should wait before retrying after a 503.
const RETRY_AFTER_SECS: &str = "30";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    Queued(Target),
    Current {
        build: u64,
        reason: String,
    },
    Duplicate,
    Ignored(String),
    Invalid(String),
    /// 401; `cause` is a bounded label (`VerifyError::cause`, or `no-secret`).
    Unauthorized {
        cause: &'static str,
        reason: String,
    },
    Refused(String),
    TooLarge,
    /// Hydra's no (422) or Hydra out of reach (503), by `HydraError::is_unavailable`.
    Hydra(HydraError),
    /// 503: an earlier copy with this `webhook-id` is still being answered.
    InFlight,
    /// 503: not answered within the request timeout (busy, a slow client, a slow Hydra).
    TimedOut(String),
}

impl Answer {
    pub fn status(&self) -> StatusCode {
        match self {
            Answer::Queued(_) => StatusCode::ACCEPTED,
            Answer::Current { .. } | Answer::Duplicate | Answer::Ignored(_) => StatusCode::OK,
            Answer::Invalid(_) => StatusCode::BAD_REQUEST,
            Answer::Unauthorized { .. } => StatusCode::UNAUTHORIZED,
            Answer::Refused(_) => StatusCode::CONFLICT,
            Answer::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Answer::Hydra(e) if e.is_unavailable() => StatusCode::SERVICE_UNAVAILABLE,
            Answer::Hydra(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Answer::InFlight | Answer::TimedOut(_) => StatusCode::SERVICE_UNAVAILABLE,
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
            Answer::Unauthorized { .. } => "unauthorized",
            Answer::Refused(_) => "refused",
            Answer::Hydra(e) if e.is_unavailable() => "unavailable",
            Answer::Hydra(_) => "rejected",
            Answer::InFlight | Answer::TimedOut(_) => "unavailable",
        }
    }

    /// Why a request was not accepted, as a bounded metrics label; None for a 2xx answer.
    pub fn cause(&self) -> Option<&'static str> {
        match self {
            Answer::Queued(_) | Answer::Current { .. } | Answer::Duplicate | Answer::Ignored(_) => {
                None
            }
            Answer::Invalid(_) => Some("invalid-body"),
            Answer::TooLarge => Some("body-too-large"),
            Answer::Unauthorized { cause, .. } => Some(cause),
            Answer::Refused(_) => Some("older-than-deployed"),
            Answer::Hydra(e) => Some(e.cause()),
            Answer::InFlight => Some("in-flight"),
            Answer::TimedOut(_) => Some("request-timeout"),
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
            Answer::Hydra(e) => json!({ "status": status, "reason": e.to_string() }),
            Answer::InFlight => json!({
                "status": status,
                "reason": "an earlier copy of this webhook-id is still being answered; retry later"
            }),
            Answer::Ignored(reason)
            | Answer::Invalid(reason)
            | Answer::Unauthorized { reason, .. }
            | Answer::Refused(reason)
            | Answer::TimedOut(reason) => json!({ "status": status, "reason": reason }),
        }
    }

    /// The reason of the answers that are only a status and a reason (most refusals).
    fn plain_reason(&self) -> Option<&str> {
        match self {
            Answer::Ignored(reason)
            | Answer::Invalid(reason)
            | Answer::Unauthorized { reason, .. }
            | Answer::Refused(reason)
            | Answer::TimedOut(reason) => Some(reason),
            _ => None,
        }
    }
}

/// For logs: `queued build 4821 /nix/store/…`, `refused: <reason>`, as the answer says it.
impl std::fmt::Display for Answer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let status = self.label();
        match self {
            Answer::Queued(t) => write!(f, "{status} build {} {}", t.build, t.path),
            Answer::Current { build, reason } => write!(f, "{status} build {build}: {reason}"),
            Answer::Duplicate => f.write_str(status),
            Answer::TooLarge => write!(
                f,
                "{status}: body over {} bytes",
                crate::config::MAX_BODY_BYTES
            ),
            Answer::InFlight => write!(f, "{status}: a copy of this webhook-id is being answered"),
            Answer::Hydra(e) => write!(f, "{status}: {e}"),
            Answer::Ignored(reason)
            | Answer::Invalid(reason)
            | Answer::Unauthorized { reason, .. }
            | Answer::Refused(reason)
            | Answer::TimedOut(reason) => write!(f, "{status}: {reason}"),
        }
    }
}

impl From<Intake> for Answer {
    fn from(intake: Intake) -> Answer {
        match intake {
            Intake::Queued(target) => Answer::Queued(target),
            Intake::Current { build, reason } => Answer::Current { build, reason },
            Intake::Refused(reason) => Answer::Refused(reason),
            Intake::Hydra(e) => Answer::Hydra(e),
        }
    }
}

/// The common shape, serialized straight from borrowed fields: no `Value` tree for each refusal,
/// which a flood of forged requests would otherwise pay for (BENCHMARKS.md, reject path).
#[derive(serde::Serialize)]
struct Reasoned<'a> {
    status: &'static str,
    reason: &'a str,
}

impl IntoResponse for Answer {
    fn into_response(self) -> Response {
        let mut response = match self.plain_reason() {
            Some(reason) => {
                let body = Reasoned {
                    status: self.label(),
                    reason,
                };
                (self.status(), Json(body)).into_response()
            }
            None => (self.status(), Json(self.body())).into_response(),
        };
        if self.status() == StatusCode::SERVICE_UNAVAILABLE {
            response.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from_static(RETRY_AFTER_SECS),
            );
        }
        response
    }
}
