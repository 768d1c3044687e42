//! Secrets stay secret: Hydra credentials come from `hydra.credentials_file` (never the URL) and
//! appear in no answer, metric, log line or hook environment; weak keys and readable key files
//! are refused or warned about; durations that would overflow are refused.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::os::unix::fs::PermissionsExt;

use common::{BIN, Rig};

const PASSWORD: &str = "pw-Zq8rT3-never-shown";

fn check_config(path: &std::path::Path) -> (i32, String) {
    let output = std::process::Command::new(BIN)
        .args(["check-config", "--config"])
        .arg(path)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.code().unwrap_or(-1), text)
}

#[tokio::test]
async fn hydra_credentials_are_used_and_never_shown() {
    let hook_env = "hook-env";
    let mut rig = Rig::start("").await;
    rig.stop().await;
    let credentials = rig.path("hydra-credentials");
    std::fs::write(&credentials, format!("agent:{PASSWORD}\n")).unwrap();
    std::fs::set_permissions(&credentials, std::fs::Permissions::from_mode(0o600)).unwrap();
    let text = rig.config_text().replace(
        "[hydra]\n",
        &format!(
            "[hooks]\non_success = [\"/bin/sh\", \"-c\", \"env > {}\"]\n[hydra]\ncredentials_file = \"{}\"\n",
            rig.path(hook_env).display(),
            credentials.display()
        ),
    );
    std::fs::write(rig.path("agent.toml"), &text).unwrap();
    // In the URL instead, check-config refuses it and does not repeat the password.
    let url_config = rig.path("url.toml");
    std::fs::write(
        &url_config,
        text.replace(
            "http://127.0.0.1",
            &format!("http://agent:{PASSWORD}@127.0.0.1"),
        ),
    )
    .unwrap();
    let (code, message) = check_config(&url_config);
    assert_eq!(code, 2, "{message}");
    assert!(message.contains("credentials_file"), "{message}");
    assert!(!message.contains(PASSWORD), "{message}");

    rig.spawn_with_written_config().await;
    rig.build(5);
    let (code, answer) = rig.post(r#"{"build": 5}"#).await;
    assert_eq!(code, 202, "{answer}");
    rig.wait_for_attempt(5).await;
    // Hydra was asked with basic auth.
    let expected = format!("Basic {}", base64_of(&format!("agent:{PASSWORD}")));
    let auth = rig.hydra.authorizations();
    assert!(
        !auth.is_empty() && auth.iter().all(|a| a.as_deref() == Some(expected.as_str())),
        "{auth:?}"
    );
    // The hook ran; wait for its file.
    let hook_file = rig.path(hook_env);
    for _ in 0..200 {
        if hook_file.exists() && std::fs::metadata(&hook_file).unwrap().len() > 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    let env = std::fs::read_to_string(&hook_file).expect("the on_success hook ran");
    assert!(env.contains("NIXOS_HYDRA_UPGRADE_"), "{env}");
    let status = reqwest::get(format!("{}/v1/status", rig.url))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let metrics = reqwest::get(format!("{}/metrics", rig.url))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    rig.stop().await;
    let logs = rig.logs.lock().unwrap().join("\n");
    let token = base64_of(&format!("agent:{PASSWORD}"));
    for (what, text) in [
        ("status", &status),
        ("metrics", &metrics),
        ("logs", &logs),
        ("hook environment", &env),
    ] {
        assert!(!text.contains(PASSWORD), "password in {what}");
        assert!(!text.contains(&token), "basic auth token in {what}");
    }
}

fn base64_of(text: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(text)
}

#[tokio::test]
async fn key_policy_short_keys_refused_readable_files_warned() {
    let mut rig = Rig::start("").await;
    // The rig writes its secret file with the umask's 0644: warned at start, with its path.
    let secret = rig.path("secret");
    let warned = rig.logs().into_iter().any(|l| {
        l["level"] == "warn"
            && l["message"]
                .as_str()
                .unwrap_or_default()
                .contains("readable by group or others")
            && l["path"] == secret.display().to_string()
    });
    assert!(warned, "{:?}", rig.logs());
    rig.stop().await;
    // A key of 8 bytes: the agent does not start, and says why.
    std::fs::write(&secret, "whsec_AAAAAAAAAAA=\n").unwrap();
    let output = tokio::process::Command::new(BIN)
        .args(["serve", "--config"])
        .arg(rig.path("agent.toml"))
        .output()
        .await
        .unwrap();
    assert!(!output.status.success());
    let text = String::from_utf8_lossy(&output.stderr).into_owned()
        + &String::from_utf8_lossy(&output.stdout);
    assert!(text.contains("fewer than 16"), "{text}");
}

#[test]
fn durations_that_would_overflow_are_refused_by_check_config() {
    let dir = tempfile::tempdir().unwrap();
    let base = "host = \"web1\"\n[hydra]\ninstance = \"http://127.0.0.1:9\"\nproject = \"p\"\njobset = \"j\"\n";
    for (line, key) in [
        (
            "activation_timeout = \"300000000000years\"\n",
            "activation_timeout",
        ),
        (
            "signature_tolerance = \"1000years\"\n",
            "signature_tolerance",
        ),
    ] {
        let path = dir.path().join("agent.toml");
        std::fs::write(&path, format!("{line}{base}")).unwrap();
        let (code, message) = check_config(&path);
        assert_eq!(code, 2, "{message}");
        assert!(message.contains(key), "{message}");
    }
}
