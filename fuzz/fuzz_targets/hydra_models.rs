//! libFuzzer target: Hydra's JSON models, store-path validation and the `Location` parser.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nixos_hydra_upgrade::hydra::build_id_from_location;
use nixos_hydra_upgrade::hydra::models::{Build, ErrorBody, Eval, is_store_path};

fuzz_target!(|data: &[u8]| {
    if let Ok(build) = serde_json::from_slice::<Build>(data) {
        for output in build.buildoutputs.values() {
            if let Some(path) = &output.path
                && is_store_path(path)
            {
                assert!(path.starts_with("/nix/store/") && !path[11..].contains('/'));
            }
        }
    }
    let _ = serde_json::from_slice::<Eval>(data);
    let _ = serde_json::from_slice::<ErrorBody>(data);
    if let Some(id) = build_id_from_location(&String::from_utf8_lossy(data)) {
        assert!(id > 0);
    }
});
