//! Standard Webhooks v1 signatures: signing, and constant-time verification over the raw body.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::path::Path;

type HmacSha256 = Hmac<Sha256>;

/// More signature entries than this in one header are not looked at (bounds the work per request).
const MAX_SIGNATURES: usize = 8;
/// Header values longer than this are rejected before any decoding.
const MAX_HEADER_LEN: usize = 1024;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    #[error("cannot read secret file {path}: {message}")]
    Read { path: String, message: String },
    #[error("secret file line {line}: expected whsec_<base64 key>")]
    Malformed { line: usize },
    #[error("secret file holds no key")]
    Empty,
    /// `Malformed` or `Empty` in a file: the file is named, with how to make a key.
    #[error(
        "secret file {path}: {problem}; one key per line, made with: \
         printf 'whsec_%s\\n' \"$(head -c 32 /dev/urandom | base64)\""
    )]
    InFile { path: String, problem: String },
    #[error(
        "secret file line {line}: the key has {bytes} bytes, fewer than {MIN_KEY_BYTES}; make one with: printf 'whsec_%s\\n' \"$(head -c 32 /dev/urandom | base64)\""
    )]
    TooShort { line: usize, bytes: usize },
}

/// Keys shorter than this are refused: an HMAC key is only as strong as its length.
pub const MIN_KEY_BYTES: usize = 16;

/// Why a request's signature was not accepted; every variant answers 401.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VerifyError {
    #[error("missing header {0}")]
    Missing(&'static str),
    #[error("malformed header {0}")]
    Malformed(&'static str),
    #[error("timestamp {0} is outside the tolerance window")]
    Stale(i64),
    #[error("no signature matches")]
    NoMatch,
}

impl VerifyError {
    /// A bounded metrics label for the refusal.
    pub fn cause(&self) -> &'static str {
        match self {
            VerifyError::Missing(_) => "missing-header",
            VerifyError::Malformed(_) => "malformed-header",
            VerifyError::Stale(_) => "stale-timestamp",
            VerifyError::NoMatch => "bad-signature",
        }
    }
}

/// The keys of a secret file, newest first: signing uses the first, verifying accepts any.
/// Each is kept as an HMAC already keyed: the key's two pad blocks are hashed once at load,
/// not on every request (half of a refusal's SHA-256 work).
#[derive(Clone)]
pub struct Keys(Vec<HmacSha256>);

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Keys({} redacted)", self.0.len())
    }
}

impl Keys {
    pub fn parse(text: &str) -> Result<Keys, KeyError> {
        let mut keys = Vec::new();
        for (index, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let key = line
                .strip_prefix("whsec_")
                .and_then(|b64| STANDARD.decode(b64).ok())
                .filter(|k| !k.is_empty())
                .ok_or(KeyError::Malformed { line: index + 1 })?;
            if key.len() < MIN_KEY_BYTES {
                return Err(KeyError::TooShort {
                    line: index + 1,
                    bytes: key.len(),
                });
            }
            keys.push(key);
        }
        if keys.is_empty() {
            return Err(KeyError::Empty);
        }
        Ok(Keys(keys.iter().map(|k| keyed(k)).collect()))
    }

    pub fn load(path: &Path) -> Result<Keys, KeyError> {
        let text = std::fs::read_to_string(path).map_err(|e| KeyError::Read {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        warn_if_shared(path, "secret_file");
        Keys::parse(&text).map_err(|e| KeyError::InFile {
            path: path.display().to_string(),
            problem: match e {
                KeyError::Malformed { line } => format!("line {line} is not whsec_<base64 key>"),
                other => other.to_string().replace("secret file ", ""),
            },
        })
    }

    /// The `webhook-signature` header value for a message, made with the first key.
    pub fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        let key = self.0.first().cloned().unwrap_or_else(|| keyed(&[]));
        let tag = mac(key, id, timestamp, body).finalize().into_bytes();
        format!("v1,{}", STANDARD.encode(tag))
    }

    /// The three Standard Webhooks headers for sending `body` now as message `id`.
    pub fn headers(&self, id: &str, body: &[u8]) -> [(&'static str, String); 3] {
        let timestamp = jiff::Timestamp::now().as_second();
        [
            ("webhook-id", id.to_owned()),
            ("webhook-timestamp", timestamp.to_string()),
            ("webhook-signature", self.sign(id, timestamp, body)),
        ]
    }

    /// Checks the three Standard Webhooks headers against `body` at time `now` (Unix seconds).
    pub fn verify(
        &self,
        headers: &Headers<'_>,
        body: &[u8],
        now: i64,
        tolerance_secs: u64,
    ) -> Result<(), VerifyError> {
        let id = headers.id.ok_or(VerifyError::Missing("webhook-id"))?;
        if !is_valid_id(id) {
            return Err(VerifyError::Malformed("webhook-id"));
        }
        let ts_text = headers
            .timestamp
            .ok_or(VerifyError::Missing("webhook-timestamp"))?;
        let timestamp =
            parse_timestamp(ts_text).ok_or(VerifyError::Malformed("webhook-timestamp"))?;
        let signatures = headers
            .signature
            .ok_or(VerifyError::Missing("webhook-signature"))?;
        if signatures.len() > MAX_HEADER_LEN {
            return Err(VerifyError::Malformed("webhook-signature"));
        }
        let tolerance = i64::try_from(tolerance_secs).unwrap_or(i64::MAX);
        if timestamp.abs_diff(now) > tolerance.unsigned_abs() {
            return Err(VerifyError::Stale(timestamp));
        }
        // Decoded on the stack: a forged request costs no allocation here.
        let mut candidates = [[0u8; 32]; MAX_SIGNATURES];
        let mut found = 0;
        for b64 in signatures
            .split(' ')
            .filter_map(|entry| entry.strip_prefix("v1,"))
        {
            if found == MAX_SIGNATURES {
                break;
            }
            let mut decoded = [0u8; 48];
            if b64.len() <= 64
                && let Ok(32) = STANDARD.decode_slice(b64, &mut decoded)
            {
                candidates[found].copy_from_slice(&decoded[..32]);
                found += 1;
            }
        }
        if found == 0 {
            return Err(VerifyError::Malformed("webhook-signature"));
        }
        let mut matched = false;
        for key in &self.0 {
            let base = mac(key.clone(), id, timestamp, body);
            for tag in &candidates[..found] {
                // verify_slice compares in constant time; keep looping so timing says nothing.
                matched |= base.clone().verify_slice(tag).is_ok();
            }
        }
        if matched {
            Ok(())
        } else {
            Err(VerifyError::NoMatch)
        }
    }
}

/// Warns (with its path) when a file holding a secret can be read by group or others.
pub fn warn_if_shared(path: &Path, what: &str) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = std::fs::metadata(path)
        && meta.permissions().mode() & 0o077 != 0
    {
        tracing::warn!(
            path = %path.display(),
            mode = %format!("{:o}", meta.permissions().mode() & 0o777),
            "{what} is readable by group or others; chmod 600 it (or use LoadCredential)"
        );
    }
}

/// The three header values as received (None when absent or not text).
#[derive(Debug, Clone, Copy, Default)]
pub struct Headers<'a> {
    pub id: Option<&'a str>,
    pub timestamp: Option<&'a str>,
    pub signature: Option<&'a str>,
}

/// `[A-Za-z0-9_-]{1,128}` (SPEC §4).
pub fn is_valid_id(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fn parse_timestamp(text: &str) -> Option<i64> {
    if text.is_empty() || text.len() > 12 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// An HMAC-SHA256 keyed with `key`, ready for the message.
fn keyed(key: &[u8]) -> HmacSha256 {
    // HMAC takes keys of any length, so this cannot fail; fall back to an empty key regardless.
    HmacSha256::new_from_slice(key)
        .unwrap_or_else(|_| <HmacSha256 as hmac::digest::KeyInit>::new(&Default::default()))
}

fn mac(mut mac: HmacSha256, id: &str, timestamp: i64, body: &[u8]) -> HmacSha256 {
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(decimal(timestamp, &mut [0u8; 20]));
    mac.update(b".");
    mac.update(body);
    mac
}

/// `n` in decimal, written into `buf` (no allocation per request).
fn decimal(n: i64, buf: &mut [u8; 20]) -> &[u8] {
    let mut at = buf.len();
    let mut rest = n.unsigned_abs();
    loop {
        at -= 1;
        buf[at] = b'0' + (rest % 10) as u8;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    if n < 0 {
        at -= 1;
        buf[at] = b'-';
    }
    &buf[at..]
}

/// A fresh `whsec_` secret line with 32 random bytes.
pub fn generate_secret() -> String {
    let bytes: [u8; 32] = rand::random();
    format!("whsec_{}", STANDARD.encode(bytes))
}

/// A fresh random `webhook-id`.
pub fn generate_id() -> String {
    let bytes: [u8; 12] = rand::random();
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("msg_{hex}")
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const SECRET: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";
    const ID: &str = "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk";
    const TS: i64 = 1649367553;
    const BODY: &[u8] = br#"{"email":"test@example.com","username":"test_user"}"#;
    const EXPECTED: &str = "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw=";

    fn headers<'a>(id: &'a str, ts: &'a str, sig: &'a str) -> Headers<'a> {
        Headers {
            id: Some(id),
            timestamp: Some(ts),
            signature: Some(sig),
        }
    }

    #[test]
    fn matches_the_published_vector() {
        let keys = Keys::parse(SECRET).unwrap();
        assert_eq!(keys.sign(ID, TS, BODY), EXPECTED);
        assert_eq!(
            keys.verify(&headers(ID, "1649367553", EXPECTED), BODY, TS, 300),
            Ok(())
        );
    }

    #[test]
    fn verification_table() {
        let other = generate_secret();
        let rotated = Keys::parse(&format!("{other}\n\n# old key\n{SECRET}\n")).unwrap();
        let only_other = Keys::parse(&other).unwrap();
        let keys = Keys::parse(SECRET).unwrap();
        let ts = "1649367553";
        let two = format!("v1,AAAA v1,{} {EXPECTED}", "A".repeat(43) + "=");
        type Case<'a> = (
            &'a Keys,
            Headers<'a>,
            &'a [u8],
            i64,
            Result<(), VerifyError>,
        );
        let cases: Vec<Case> = vec![
            (&rotated, headers(ID, ts, EXPECTED), BODY, TS, Ok(())),
            (&keys, headers(ID, ts, &two), BODY, TS, Ok(())),
            (
                &only_other,
                headers(ID, ts, EXPECTED),
                BODY,
                TS,
                Err(VerifyError::NoMatch),
            ),
            (
                &keys,
                headers(ID, ts, EXPECTED),
                b"{}",
                TS,
                Err(VerifyError::NoMatch),
            ),
            (
                &keys,
                headers("msg_other", ts, EXPECTED),
                BODY,
                TS,
                Err(VerifyError::NoMatch),
            ),
            (
                &keys,
                headers(ID, ts, EXPECTED),
                BODY,
                TS + 301,
                Err(VerifyError::Stale(TS)),
            ),
            (
                &keys,
                headers(ID, ts, EXPECTED),
                BODY,
                TS - 301,
                Err(VerifyError::Stale(TS)),
            ),
            (&keys, headers(ID, ts, EXPECTED), BODY, TS + 300, Ok(())),
            (
                &keys,
                headers(ID, "-5", EXPECTED),
                BODY,
                TS,
                Err(VerifyError::Malformed("webhook-timestamp")),
            ),
            (
                &keys,
                headers(ID, "1e9", EXPECTED),
                BODY,
                TS,
                Err(VerifyError::Malformed("webhook-timestamp")),
            ),
            (
                &keys,
                headers("bad id!", ts, EXPECTED),
                BODY,
                TS,
                Err(VerifyError::Malformed("webhook-id")),
            ),
            (
                &keys,
                headers(ID, ts, "v2,abc"),
                BODY,
                TS,
                Err(VerifyError::Malformed("webhook-signature")),
            ),
            (
                &keys,
                headers(ID, ts, "v1,not-base64!"),
                BODY,
                TS,
                Err(VerifyError::Malformed("webhook-signature")),
            ),
            (
                &keys,
                Headers {
                    id: None,
                    ..headers(ID, ts, EXPECTED)
                },
                BODY,
                TS,
                Err(VerifyError::Missing("webhook-id")),
            ),
            (
                &keys,
                Headers {
                    signature: None,
                    ..headers(ID, ts, EXPECTED)
                },
                BODY,
                TS,
                Err(VerifyError::Missing("webhook-signature")),
            ),
        ];
        for (i, (keys, h, body, now, want)) in cases.into_iter().enumerate() {
            assert_eq!(keys.verify(&h, body, now, 300), want, "case {i}");
        }
    }

    #[test]
    fn key_file_errors() {
        assert_eq!(Keys::parse("").unwrap_err(), KeyError::Empty);
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("key");
        std::fs::write(&file, "whsec_\nnot a key\n").unwrap();
        let err = Keys::load(&file).unwrap_err().to_string();
        assert!(
            err.starts_with(&format!(
                "secret file {}: line 1 is not whsec_<base64 key>; one key per line",
                file.display()
            )),
            "{err}"
        );
        std::fs::write(&file, "# rotated out\n").unwrap();
        let err = Keys::load(&file).unwrap_err().to_string();
        assert!(
            err.contains(&format!("{}: holds no key", file.display())),
            "{err}"
        );
        assert_eq!(Keys::parse("# none\n").unwrap_err(), KeyError::Empty);
        assert_eq!(
            Keys::parse("secret\n").unwrap_err(),
            KeyError::Malformed { line: 1 }
        );
        assert_eq!(
            Keys::parse(&format!("{SECRET}\nwhsec_!!\n")).unwrap_err(),
            KeyError::Malformed { line: 2 }
        );
        assert!(!format!("{:?}", Keys::parse(SECRET).unwrap()).contains("C2FV"));
        // 15 bytes refused, 16 accepted.
        let key = |n: usize| format!("whsec_{}\n", STANDARD.encode(vec![7u8; n]));
        assert_eq!(
            Keys::parse(&key(1)).unwrap_err(),
            KeyError::TooShort { line: 1, bytes: 1 }
        );
        assert_eq!(
            Keys::parse(&format!("{SECRET}\n{}", key(15))).unwrap_err(),
            KeyError::TooShort { line: 2, bytes: 15 }
        );
        assert!(Keys::parse(&key(16)).is_ok());
    }

    #[test]
    fn decimal_matches_to_string() {
        for n in [0, 7, 10, 1_767_225_600, -1, -42, i64::MAX, i64::MIN] {
            assert_eq!(decimal(n, &mut [0u8; 20]), n.to_string().as_bytes(), "{n}");
        }
    }

    #[test]
    fn ids() {
        assert!(is_valid_id(&generate_id()));
        assert!(is_valid_id(&"a".repeat(128)));
        assert!(!is_valid_id(&"a".repeat(129)));
        assert!(!is_valid_id(""));
        assert!(Keys::parse(&generate_secret()).is_ok());
    }
}
