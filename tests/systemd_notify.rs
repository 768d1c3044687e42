//! Under systemd (`Type=notify`): READY=1 once the listener is bound, STATUS= with the phase, and
//! WATCHDOG=1 both while idle and through a long activation — on a real NOTIFY_SOCKET.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::{Duration, Instant};

use common::Rig;
use tokio::net::UnixDatagram;

async fn next(socket: &UnixDatagram) -> String {
    let mut buffer = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(10), socket.recv(&mut buffer))
        .await
        .expect("no notification within 10 s")
        .unwrap();
    String::from_utf8_lossy(&buffer[..n]).into_owned()
}

#[tokio::test]
async fn ready_status_and_watchdog() {
    let mut rig = Rig::start("").await;
    rig.stop().await;
    let path = rig.path("notify.sock");
    let socket = UnixDatagram::bind(&path).unwrap();
    rig.env = vec![
        ("NOTIFY_SOCKET".into(), path.display().to_string()),
        ("WATCHDOG_USEC".into(), "400000".into()),
    ];
    rig.spawn().await;
    let first = next(&socket).await;
    assert!(
        first.starts_with("READY=1\nSTATUS=idle, listening on 127.0.0.1:"),
        "{first}"
    );
    assert_eq!(next(&socket).await, "WATCHDOG=1", "idle worker pings");

    // A fake nix (the closure diff runs before activation) tells whether children see the socket.
    let nix = rig.path("nix");
    std::fs::write(
        &nix,
        "#!/bin/sh\necho \"notify=${NOTIFY_SOCKET:-unset}\" >> \"$(dirname \"$0\")/calls\"\n",
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&nix, std::fs::Permissions::from_mode(0o755)).unwrap();

    // An activation far longer than the watchdog interval keeps pinging.
    rig.build(80);
    rig.set("delay", "2");
    assert_eq!(rig.post(r#"{"build": 80}"#).await.0, 202);
    let started = Instant::now();
    let mut seen = Vec::new();
    let mut pings_while_activating = 0;
    while started.elapsed() < Duration::from_secs(15) {
        let message = next(&socket).await;
        if message == "WATCHDOG=1"
            && seen
                .last()
                .is_some_and(|s| s == "STATUS=activating build 80")
        {
            pings_while_activating += 1;
        }
        if message.starts_with("STATUS=") {
            seen.push(message.clone());
        }
        if message == "STATUS=idle" {
            break;
        }
    }
    assert!(
        seen.contains(&"STATUS=activating build 80".to_owned()),
        "{seen:?}"
    );
    assert_eq!(
        seen.last().map(String::as_str),
        Some("STATUS=idle"),
        "{seen:?}"
    );
    assert!(
        pings_while_activating >= 5,
        "2 s of activation at a 0.2 s ping interval: {pings_while_activating} pings"
    );
    assert_eq!(rig.status().await["last_attempt"]["outcome"], "upgraded");
    assert_eq!(
        rig.calls()[0],
        "notify=unset",
        "children do not inherit NOTIFY_SOCKET"
    );

    assert_eq!(rig.stop().await, 0);
    let mut stopping = false;
    for _ in 0..50 {
        if next(&socket).await.starts_with("STOPPING=1") {
            stopping = true;
            break;
        }
    }
    assert!(stopping, "STOPPING=1 on SIGTERM");
}
