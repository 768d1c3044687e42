//! The curl + openssl example of docs/api.md works as written: run against the real agent, with
//! only its key file and agent URL lines pointed at the test's.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::Rig;

fn api_snippet() -> String {
    let api = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/api.md")).unwrap();
    let block = api
        .split("<!-- curl-example:begin -->")
        .nth(1)
        .and_then(|rest| rest.split("<!-- curl-example:end -->").next())
        .expect("docs/api.md has the curl example between its markers");
    block
        .lines()
        .filter(|l| !l.starts_with("```"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test]
async fn the_curl_example_queues_an_upgrade() {
    for tool in ["sh", "openssl", "curl", "od"] {
        let found = std::process::Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .status()
            .unwrap();
        assert!(
            found.success(),
            "{tool} is required for this test and missing"
        );
    }
    let rig = Rig::start("").await;
    rig.build(4821);
    let script: Vec<String> = api_snippet()
        .lines()
        .map(|line| {
            if line.starts_with("key_file=") {
                format!("key_file={}", rig.path("secret").display())
            } else if line.starts_with("agent=") {
                format!("agent={}", rig.url)
            } else {
                line.to_owned()
            }
        })
        .collect();
    let output = tokio::process::Command::new("sh")
        .args(["-c", &script.join("\n")])
        .output()
        .await
        .unwrap();
    let out = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let answer: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(answer["status"], "queued", "{answer}");
    assert_eq!(answer["build"], 4821);
}
