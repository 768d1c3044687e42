//! One `[[health_checks.pre]]`/`[[health_checks.post]]` entry: its kinds, keys and defaults.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use super::config::{
    DEFAULT_INTERVAL, DEFAULT_RETRIES, DEFAULT_SYSTEMCTL, HealthConfigError, MAX_RETRIES,
};
use super::validate::{check_address, check_argv, check_host, check_units, check_url};
use super::{Check, CheckKind};

/// One `[[health_checks.pre]]` / `[[health_checks.post]]` entry, tagged by `kind`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum CheckSpec {
    Icmp(IcmpSpec),
    Tcp(TcpSpec),
    Http(HttpSpec),
    Systemd(SystemdSpec),
    Command(CommandSpec),
}

/// Defines a spec struct with the keys every kind shares plus its own.
macro_rules! check_spec {
    ($(#[$meta:meta])* $name:ident { $($(#[$fmeta:meta])* $field:ident: $ty:ty,)* }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Deserialize, PartialEq)]
        #[serde(deny_unknown_fields)]
        pub struct $name {
            /// Shown in the table, the log and `/v1/status`; default: the target.
            #[serde(default)]
            pub name: Option<String>,
            /// Timeout of one attempt; default `health_checks.timeout`.
            #[serde(default, deserialize_with = "de_timeout")]
            pub timeout: Option<Duration>,
            /// Attempts after the first failed one; default [`DEFAULT_RETRIES`].
            #[serde(default, deserialize_with = "de_retries")]
            pub retries: Option<u32>,
            /// Pause between attempts; default [`DEFAULT_INTERVAL`].
            #[serde(default, deserialize_with = "de_interval")]
            pub interval: Option<Duration>,
            $($(#[$fmeta])* pub $field: $ty,)*
        }
    };
}

check_spec!(
    /// `kind = "icmp"`: an echo reply from `host` (IP or name; a name passes if any address answers).
    IcmpSpec { host: String, }
);
check_spec!(
    /// `kind = "tcp"`: a connection to `address` (`host:port`, `[v6]:port`) is accepted.
    TcpSpec { address: String, }
);
check_spec!(
    /// `kind = "http"`: `GET url` answers `status` (default any 2xx), body has `body_contains`.
    HttpSpec {
        url: String,
        #[serde(default, deserialize_with = "de_status")]
        status: Option<u16>,
        #[serde(default)]
        body_contains: Option<String>,
    }
);
check_spec!(
    /// `kind = "systemd"`: every unit in `units` is active.
    SystemdSpec { units: Vec<String>, }
);
check_spec!(
    /// `kind = "command"`: `argv` (no shell) exits 0.
    CommandSpec { argv: Vec<String>, }
);

// A kind-tagged table is buffered before its fields are read, so the TOML parser can point only
// at the table's header when a value is wrong; these name the key in the message instead.
fn keyed<E: serde::de::Error>(key: &str) -> impl FnOnce(E) -> E {
    move |e| E::custom(format_args!("{key}: {e}"))
}
fn de_timeout<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    humantime_serde::deserialize(d).map_err(keyed("timeout"))
}
fn de_interval<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    humantime_serde::deserialize(d).map_err(keyed("interval"))
}
fn de_retries<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    Option::<u32>::deserialize(d).map_err(keyed("retries"))
}
fn de_status<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u16>, D::Error> {
    Option::<u16>::deserialize(d).map_err(keyed("status"))
}

/// The keys every kind shares, borrowed from a spec.
struct Common<'a> {
    name: Option<&'a str>,
    timeout: Option<Duration>,
    retries: Option<u32>,
    interval: Option<Duration>,
}

impl CheckSpec {
    fn common(&self) -> Common<'_> {
        macro_rules! common {
            ($s:expr) => {
                Common {
                    name: $s.name.as_deref(),
                    timeout: $s.timeout,
                    retries: $s.retries,
                    interval: $s.interval,
                }
            };
        }
        match self {
            Self::Icmp(s) => common!(s),
            Self::Tcp(s) => common!(s),
            Self::Http(s) => common!(s),
            Self::Systemd(s) => common!(s),
            Self::Command(s) => common!(s),
        }
    }

    /// The runnable check, defaults filled in (`default_timeout` = `health_checks.timeout`).
    pub fn to_check(&self, default_timeout: Duration) -> Check {
        let kind = match self {
            Self::Icmp(s) => CheckKind::Icmp {
                host: s.host.clone(),
            },
            Self::Tcp(s) => CheckKind::Tcp {
                address: s.address.clone(),
            },
            Self::Http(s) => CheckKind::Http {
                url: s.url.clone(),
                status: s.status,
                body_contains: s.body_contains.clone(),
            },
            Self::Systemd(s) => CheckKind::Systemd {
                units: s.units.clone(),
                systemctl: PathBuf::from(DEFAULT_SYSTEMCTL),
            },
            Self::Command(s) => CheckKind::Command {
                argv: s.argv.clone(),
            },
        };
        let c = self.common();
        Check {
            name: c.name.map_or_else(|| kind.target(), str::to_owned),
            kind,
            timeout: c.timeout.unwrap_or(default_timeout),
            retries: c.retries.unwrap_or(DEFAULT_RETRIES),
            interval: c.interval.unwrap_or(DEFAULT_INTERVAL),
        }
    }

    pub(super) fn validate(&self, key: &str) -> Result<(), HealthConfigError> {
        let bad = |field: &str, reason: String| HealthConfigError::Invalid {
            key: format!("{key}.{field}"),
            reason,
        };
        let c = self.common();
        if let Some(name) = c.name
            && (name.trim().is_empty() || name.chars().any(char::is_control))
        {
            return Err(bad("name", "must be non-empty text on one line".into()));
        }
        if c.timeout == Some(Duration::ZERO) {
            return Err(bad("timeout", "must be greater than 0".into()));
        }
        if let Some(r) = c.retries.filter(|r| *r > MAX_RETRIES) {
            return Err(bad("retries", format!("{r} is more than {MAX_RETRIES}")));
        }
        match self {
            Self::Icmp(s) => check_host(&s.host).map_err(|r| bad("host", r)),
            Self::Tcp(s) => check_address(&s.address).map_err(|r| bad("address", r)),
            Self::Http(s) => {
                check_url(&s.url).map_err(|r| bad("url", r))?;
                if let Some(code) = s.status.filter(|c| !(100..=599).contains(c)) {
                    return Err(bad("status", format!("{code} is not an HTTP status")));
                }
                match &s.body_contains {
                    Some(b) if b.is_empty() => {
                        Err(bad("body_contains", "must not be empty".into()))
                    }
                    _ => Ok(()),
                }
            }
            Self::Systemd(s) => check_units(&s.units).map_err(|(i, r)| match i {
                Some(i) => bad(&format!("units[{i}]"), r),
                None => bad("units", r),
            }),
            Self::Command(s) => check_argv(&s.argv).map_err(|(i, r)| match i {
                Some(i) => bad(&format!("argv[{i}]"), r),
                None => bad("argv", r),
            }),
        }
    }
}
