//! Newest wins: a burst of notifications during a slow activation ends in exactly one more
//! activation, for the newest build.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{JOB, Rig, runcommand_payload};
use nixos_hydra_upgrade::hydra::sim::fake_out_path;

#[tokio::test]
async fn twenty_notifications_during_a_slow_activation() {
    let rig = Rig::start("").await;
    rig.set("delay", "2");
    for id in 1..=21 {
        rig.build(id);
    }
    let (code, _) = rig.post(&runcommand_payload(1, 0, JOB)).await;
    assert_eq!(code, 202);
    while rig.status().await["phase"] != "activating" {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    // 2..=21 in a scrambled order, all at once.
    let order: Vec<u64> = (0..20).map(|i| 2 + (i * 7) % 20).collect();
    let answers = futures_util::future::join_all(
        order
            .iter()
            .map(|id| rig.post_owned(runcommand_payload(*id, 0, JOB))),
    )
    .await;
    for (id, (code, body)) in order.iter().zip(&answers) {
        assert!(matches!(code, 200 | 202), "build {id}: {code} {body}");
    }
    rig.set("delay", "0");
    let status = rig.wait_for_attempt(21).await;
    assert_eq!(status["deployed"]["build"], 21);
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(
        rig.calls(),
        [
            format!(
                "nixos-rebuild switch --store-path {} --no-reexec",
                fake_out_path(1, JOB)
            ),
            format!(
                "nixos-rebuild switch --store-path {} --no-reexec",
                fake_out_path(21, JOB)
            ),
        ]
    );
    assert!(rig.status().await["pending"].is_null());
}
