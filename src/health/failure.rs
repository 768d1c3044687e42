//! Why one attempt of a health check failed; the `detail` shown in `/v1/status` is its text.

use std::net::IpAddr;
use std::time::Duration;

/// What one attempt found: `Ok(detail)` passed, `Err(why)` failed.
pub(super) type Probe = Result<String, CheckFailure>;

/// What an attempt was waiting for when its timeout ran out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Awaited {
    EchoReply { from: String },
    Connect { to: String },
    Response,
    Systemctl,
    Command,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CheckFailure {
    /// The check names nothing to probe (empty argv, no units).
    #[error("{0}")]
    NothingToCheck(&'static str),
    /// The attempt outlived its timeout; a command is killed with its process group.
    #[error("{}", timeout_text(.awaited, *.after))]
    Timeout { awaited: Awaited, after: Duration },
    /// The probe could not be made: no program, no address, no socket.
    #[error("{0}")]
    CannotProbe(String),
    /// The target did not take the connection (refused, reset, unreachable); `to` when several
    /// addresses were tried.
    #[error("{}{reason}", .to.as_ref().map_or(String::new(), |to| format!("{to}: ")))]
    Connect { to: Option<String>, reason: String },
    /// An HTTP answer with another status than the one asked for (any 2xx by default).
    #[error("status {code}{}", .expected.map_or(String::new(), |want| format!(", expected {want}")))]
    Status { code: u16, expected: Option<u16> },
    #[error("status {code}, reading the body: {reason}")]
    BodyUnreadable { code: u16, reason: String },
    #[error("status {code}, body does not contain {needle:?}{}", if *.truncated { " (first 1 MiB read)" } else { "" })]
    BodyMismatch {
        code: u16,
        needle: String,
        truncated: bool,
    },
    /// A command that did not exit 0: "exit status 3", "killed by signal 9", and the last line
    /// it printed (": …", or nothing).
    #[error("{status}{last_line}")]
    Exit { status: String, last_line: String },
    /// Units that are not active, each with the state systemctl gave.
    #[error("{}", .0.iter().map(|(unit, state)| format!("{unit} is {state}")).collect::<Vec<_>>().join(", "))]
    Inactive(Vec<(String, String)>),
    #[error("systemctl is-active gave {states} states for {units} units ({status}){last_line}")]
    SystemctlOutput {
        states: usize,
        units: usize,
        status: String,
        last_line: String,
    },
    #[error("{ip} answered with ICMP type {icmp_type}, not an echo reply")]
    NotEchoReply { ip: IpAddr, icmp_type: u8 },
    /// Every address of the target failed, each for its own reason.
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    All(Vec<CheckFailure>),
    /// The check's task panicked or was cancelled.
    #[error("check task ended abnormally: {0}")]
    Aborted(String),
    /// The phase deadline stopped the check; its last failed attempt, if any.
    #[error("phase deadline exceeded{}", .last.as_ref().map_or(String::new(), |l| format!(" (last attempt: {l})")))]
    PhaseDeadline { last: Option<Box<CheckFailure>> },
}

fn timeout_text(awaited: &Awaited, after: Duration) -> String {
    let t = humantime::format_duration(after);
    match awaited {
        Awaited::EchoReply { from } => format!("no echo reply from {from} within {t}"),
        Awaited::Connect { to } => format!("connect to {to} timed out after {t}"),
        Awaited::Response => format!("no complete response within {t}"),
        Awaited::Systemctl => format!("systemctl timed out after {t} (killed)"),
        Awaited::Command => format!("timed out after {t} (killed)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn details_read_as_before() {
        let second = Duration::from_secs(1);
        let cases = [
            (
                CheckFailure::Timeout {
                    awaited: Awaited::Connect {
                        to: "db:5432".into(),
                    },
                    after: second,
                },
                "connect to db:5432 timed out after 1s",
            ),
            (
                CheckFailure::Status {
                    code: 200,
                    expected: Some(204),
                },
                "status 200, expected 204",
            ),
            (
                CheckFailure::Status {
                    code: 503,
                    expected: None,
                },
                "status 503",
            ),
            (
                CheckFailure::All(vec![
                    CheckFailure::Connect {
                        to: Some("[::1]:1".into()),
                        reason: "connection refused".into(),
                    },
                    CheckFailure::Connect {
                        to: Some("127.0.0.1:1".into()),
                        reason: "connection refused".into(),
                    },
                ]),
                "[::1]:1: connection refused; 127.0.0.1:1: connection refused",
            ),
            (
                CheckFailure::Inactive(vec![
                    ("a.service".into(), "failed".into()),
                    ("b.service".into(), "inactive".into()),
                ]),
                "a.service is failed, b.service is inactive",
            ),
            (
                CheckFailure::PhaseDeadline {
                    last: Some(Box::new(CheckFailure::Exit {
                        status: "exit status 1".into(),
                        last_line: String::new(),
                    })),
                },
                "phase deadline exceeded (last attempt: exit status 1)",
            ),
            (
                CheckFailure::PhaseDeadline { last: None },
                "phase deadline exceeded",
            ),
        ];
        for (failure, text) in cases {
            assert_eq!(failure.to_string(), text);
        }
    }
}
