//! libFuzzer target: the `POST /v1/upgrade` body parser (RunCommand payload or manual body).
#![no_main]

use libfuzzer_sys::fuzz_target;
use nixos_hydra_upgrade::http::upgrade::{Parsed, parse_body};

fuzz_target!(|data: &[u8]| {
    match parse_body(data) {
        Ok(Parsed::Request(request)) => assert!(request.build.is_none_or(|b| b > 0)),
        Ok(Parsed::Ignore(reason)) => assert!(!reason.is_empty()),
        Err(reason) => assert!(!reason.is_empty() && !reason.contains('\n')),
    }
});
