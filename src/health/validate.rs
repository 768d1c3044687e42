//! Syntax of check targets (hosts, `host:port`, URLs, unit names, argv) for config validation.

use std::net::{IpAddr, Ipv6Addr};

/// An IP address (v6 may carry a `%zone`) or a DNS host name.
pub(super) fn check_host(host: &str) -> Result<(), String> {
    if host.parse::<IpAddr>().is_ok() {
        return Ok(());
    }
    if let Some((addr, zone)) = host.split_once('%') {
        let zone_ok = !zone.is_empty()
            && zone
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
        if addr.parse::<Ipv6Addr>().is_ok() && zone_ok {
            return Ok(());
        }
    }
    let name = host.strip_suffix('.').unwrap_or(host);
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && l.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    };
    if name.is_empty() || name.len() > 253 || !name.split('.').all(label_ok) {
        return Err(format!("{host:?} is neither an IP address nor a host name"));
    }
    Ok(())
}

/// `host:port` or `[v6]:port`, port 1–65535.
pub(super) fn check_address(address: &str) -> Result<(), String> {
    let (host, port) = address
        .rsplit_once(':')
        .ok_or_else(|| format!("{address:?} is not host:port"))?;
    match port.parse::<u16>() {
        Ok(p) if p > 0 => {}
        _ => return Err(format!("{address:?}: port {port:?} is not in 1-65535")),
    }
    if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        return match v6.parse::<Ipv6Addr>() {
            Ok(_) => Ok(()),
            Err(_) => Err(format!("{address:?}: {v6:?} is not an IPv6 address")),
        };
    }
    if host.contains(':') {
        return Err(format!("{address:?}: write an IPv6 address as [addr]:port"));
    }
    check_host(host).map_err(|r| format!("{address:?}: {r}"))
}

/// An absolute http(s) URL with a host.
pub(super) fn check_url(url: &str) -> Result<(), String> {
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("{url:?} is not a URL: {e}"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(format!("{url:?}: scheme must be http or https"));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(format!("{url:?} has no host"));
    }
    Ok(())
}

/// Unit names, not globs (a glob expands to any number of units, so the states printed could
/// not be matched to the names). A leading `-` is fine (`-.mount`): units follow `--`.
pub(super) fn check_units(units: &[String]) -> Result<(), (Option<usize>, String)> {
    if units.is_empty() {
        return Err((None, "must name at least one unit".into()));
    }
    for (i, u) in units.iter().enumerate() {
        let ok = !u.is_empty()
            && u.len() <= 256
            && !u
                .chars()
                .any(|c| c.is_whitespace() || c.is_control() || "*?[]".contains(c));
        if !ok {
            return Err((Some(i), format!("{u:?} is not a unit name")));
        }
    }
    Ok(())
}

pub(super) fn check_argv(argv: &[String]) -> Result<(), (Option<usize>, String)> {
    match argv.first() {
        None => return Err((None, "must not be empty".into())),
        Some(p) if p.is_empty() => return Err((Some(0), "program must not be empty".into())),
        Some(_) => {}
    }
    match argv.iter().position(|a| a.contains('\0')) {
        Some(i) => Err((Some(i), "contains a NUL byte".into())),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    #[test]
    fn hosts() {
        for ok in [
            "10.0.0.1",
            "::1",
            "fe80::1%eth0",
            "gateway.lan",
            "web-1.example.org.",
            "a_b",
        ] {
            assert_eq!(check_host(ok), Ok(()), "{ok}");
        }
        let long = "a".repeat(64);
        for bad in [
            "",
            ".",
            "a..b",
            "-a",
            "a b",
            "a:b",
            "fe80::1%",
            "1.2.3.4%eth0",
            &long,
        ] {
            assert!(check_host(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn addresses() {
        for ok in ["127.0.0.1:80", "[::1]:5432", "db.lan:5432", "[fe80::1]:22"] {
            assert_eq!(check_address(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "host",
            "host:",
            "host:0",
            "host:65536",
            "::1:80",
            "[::1]",
            "[x]:1",
            ":80",
        ] {
            assert!(check_address(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn urls() {
        assert_eq!(check_url("http://127.0.0.1:8080/health?x=1"), Ok(()));
        assert_eq!(check_url("https://[::1]/"), Ok(()));
        for bad in [
            "",
            "/health",
            "ftp://h/",
            "file:///etc/passwd",
            "http://",
            "unix:/run/x",
        ] {
            assert!(check_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn units_and_argv() {
        assert!(check_units(&["a.service".into(), "-.mount".into()]).is_ok());
        assert_eq!(check_units(&[]).unwrap_err().0, None);
        assert_eq!(
            check_units(&["a".into(), "b c".into()]).unwrap_err().0,
            Some(1)
        );
        assert_eq!(check_units(&["a?".into()]).unwrap_err().0, Some(0));
        assert!(check_argv(&["true".into()]).is_ok());
        assert_eq!(check_argv(&[]).unwrap_err().0, None);
        assert_eq!(
            check_argv(&["x".into(), "a\0b".into()]).unwrap_err().0,
            Some(1)
        );
    }
}
