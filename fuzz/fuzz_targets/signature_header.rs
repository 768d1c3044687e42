//! libFuzzer target: the three Standard Webhooks headers and the body, split on 0x01 bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nixos_hydra_upgrade::signature::{Headers, Keys, is_valid_id};

const SECRET: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD\n";
const NOW: i64 = 1_767_225_600;

fuzz_target!(|data: &[u8]| {
    let Ok(keys) = Keys::parse(SECRET) else {
        return;
    };
    let mut parts = data.splitn(4, |&b| b == 1);
    let text = |p: Option<&[u8]>| p.map(|b| String::from_utf8_lossy(b).into_owned());
    let (id, ts, sig) = (text(parts.next()), text(parts.next()), text(parts.next()));
    let body = parts.next().unwrap_or_default();
    let headers = Headers {
        id: id.as_deref(),
        timestamp: ts.as_deref(),
        signature: sig.as_deref(),
    };
    if keys.verify(&headers, body, NOW, 300).is_ok() {
        let (Some(id), Some(ts), Some(sig)) = (headers.id, headers.timestamp, headers.signature)
        else {
            panic!("verified without all three headers");
        };
        let ts: i64 = ts
            .parse()
            .unwrap_or_else(|_| panic!("verified a bad timestamp"));
        assert!(is_valid_id(id));
        assert!(sig.split(' ').any(|s| s == keys.sign(id, ts, body)));
    }
});
