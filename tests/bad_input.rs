//! Nothing let in, nothing that falls over: oversized, slow, malformed and unsigned input against
//! the real binary; every limit answers with a clear status and the agent keeps serving.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::{Duration, Instant};

use common::Rig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn addr(rig: &Rig) -> String {
    rig.url.trim_start_matches("http://").to_owned()
}

/// Sends raw bytes on a fresh connection; what the agent answered before it closed (or 5 s).
async fn raw(rig: &Rig, bytes: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr(rig)).await.unwrap();
    let _ = stream.write_all(bytes).await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer)).await;
    String::from_utf8_lossy(&answer).into_owned()
}

/// Sends raw bytes and reads the first answer only (the connection may stay open).
async fn raw_keep_alive(rig: &Rig, bytes: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr(rig)).await.unwrap();
    stream.write_all(bytes).await.unwrap();
    let mut answer = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut answer))
        .await
        .unwrap()
        .unwrap();
    String::from_utf8_lossy(&answer[..n]).into_owned()
}

fn status_line(answer: &str) -> &str {
    answer.lines().next().unwrap_or_default()
}

#[tokio::test]
async fn oversized_heads_and_bodies_are_refused_before_any_work() {
    let rig = Rig::start("").await;
    rig.build(5);
    // One header over the 16 KiB head limit.
    let long = format!(
        "POST /v1/upgrade HTTP/1.1\r\nHost: x\r\nX-Pad: {}\r\nContent-Length: 2\r\n\r\n{{}}",
        "a".repeat(20 * 1024)
    );
    assert!(
        status_line(&raw(&rig, long.as_bytes()).await).contains("431"),
        "header too large"
    );
    // More header fields than allowed.
    let mut many = String::from("POST /v1/upgrade HTTP/1.1\r\nHost: x\r\n");
    for i in 0..200 {
        many.push_str(&format!("X-H{i}: v\r\n"));
    }
    many.push_str("Content-Length: 2\r\n\r\n{}");
    assert!(
        status_line(&raw(&rig, many.as_bytes()).await).contains("431"),
        "too many headers"
    );
    // A chunked body (no Content-Length) that grows past 64 KiB.
    let mut chunked =
        String::from("POST /v1/upgrade HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n");
    chunked.push_str(
        "webhook-id: msg_x\r\nwebhook-timestamp: 1\r\nwebhook-signature: v1,AA==\r\n\r\n",
    );
    for _ in 0..20 {
        chunked.push_str(&format!("1000\r\n{}\r\n", "x".repeat(0x1000)));
    }
    chunked.push_str("0\r\n\r\n");
    let answer = raw(&rig, chunked.as_bytes()).await;
    assert!(status_line(&answer).contains("413"), "{answer}");
    // A Content-Length that lies far beyond the cap is refused from the header alone.
    let liar = "POST /v1/upgrade HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999\r\n\r\n";
    assert!(status_line(&raw(&rig, liar.as_bytes()).await).contains("413"));
    // Garbage that is not HTTP at all.
    let answer = raw(&rig, b"\x00\x01\x02GARBAGE\r\n\r\n").await;
    assert!(
        answer.is_empty() || status_line(&answer).contains("400"),
        "{answer}"
    );
    assert!(rig.hydra.requests().is_empty(), "Hydra was never asked");
    assert_eq!(rig.post(r#"{"build": 5}"#).await.0, 202, "still serving");
}

#[tokio::test]
async fn malformed_signed_and_unsigned_bodies() {
    let rig = Rig::start("").await;
    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    let deep_object = format!("{}1{}", "{\"a\":".repeat(5_000), "}".repeat(5_000));
    for body in [
        deep.as_str(),
        deep_object.as_str(),
        r#"{"build": 1e400}"#,
        r#"{"build": 18446744073709551616}"#,
        "{\"build\": 1, \"build\": 2, \"x\": \"\u{0}\"}",
        "\u{feff}{}",
        r#"{"event": "buildFinished", "build": 5, "finished": 1, "buildStatus": "0"}"#,
    ] {
        let (code, answer) = rig.post(body).await;
        assert!(
            code == 400 || code == 200,
            "{code} {answer} for {}",
            &body[..body.len().min(40)]
        );
        let (code, _) = rig
            .post_raw(body.as_bytes().to_vec(), &[("webhook-id", "x".into())])
            .await;
        assert_eq!(code, 401, "unsigned");
    }
    // Non-UTF-8 header values, a thousand signature entries, a huge timestamp.
    let body = br#"{"build": 5}"#.to_vec();
    let many = vec!["v1,AAAA"; 1000].join(" ");
    for headers in [
        vec![
            ("webhook-id", "msg_1".to_owned()),
            ("webhook-timestamp", "99999999999999999999999".to_owned()),
            ("webhook-signature", "v1,AA==".to_owned()),
        ],
        vec![
            ("webhook-id", "msg_1".to_owned()),
            (
                "webhook-timestamp",
                jiff::Timestamp::now().as_second().to_string(),
            ),
            ("webhook-signature", many),
        ],
    ] {
        assert_eq!(rig.post_raw(body.clone(), &headers).await.0, 401);
    }
    let non_utf8 = b"POST /v1/upgrade HTTP/1.1\r\nHost: x\r\nwebhook-id: \xff\xfe\r\nwebhook-timestamp: 1\r\nwebhook-signature: v1,\xff\r\nContent-Length: 2\r\n\r\n{}";
    assert!(status_line(&raw(&rig, non_utf8).await).contains("401"));
    assert!(rig.hydra.requests().is_empty(), "Hydra was never asked");
}

#[tokio::test]
async fn slow_and_idle_clients_are_cut_off() {
    let rig = Rig::start("").await;
    // Slowloris: a request head that never completes.
    let mut slow = TcpStream::connect(addr(&rig)).await.unwrap();
    slow.write_all(b"POST /v1/upgrade HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    // An idle connection that sends nothing at all.
    let mut idle = TcpStream::connect(addr(&rig)).await.unwrap();
    let started = Instant::now();
    let mut buf = Vec::new();
    for stream in [&mut slow, &mut idle] {
        let closed =
            tokio::time::timeout(Duration::from_secs(15), stream.read_to_end(&mut buf)).await;
        assert!(closed.is_ok(), "the agent closes a stalled connection");
    }
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(9) && waited < Duration::from_secs(14),
        "closed after the 10 s header timeout, not {waited:?}"
    );
    assert_eq!(rig.status().await["phase"], "idle", "still serving");
}

#[tokio::test]
async fn more_connections_than_the_cap_wait_and_are_then_served() {
    let rig = Rig::start("").await;
    // Fill every connection slot with idle sockets, plus some waiting in the backlog.
    let mut held = Vec::new();
    for _ in 0..(nixos_hydra_upgrade::http::serve::MAX_CONNECTIONS + 20) {
        held.push(TcpStream::connect(addr(&rig)).await.unwrap());
    }
    let started = Instant::now();
    // A real request still gets through once the header timeout frees slots.
    let status = tokio::time::timeout(Duration::from_secs(25), rig.status())
        .await
        .expect("served after the stalled connections were cut off");
    assert_eq!(status["phase"], "idle");
    let waited = started.elapsed();
    assert!(
        waited > Duration::from_secs(5) && waited < Duration::from_secs(15),
        "waited for a slot (the cap holds), then served: {waited:?}"
    );
    drop(held);
}

#[tokio::test]
async fn unknown_routes_and_methods() {
    let rig = Rig::start("").await;
    let client = reqwest::Client::new();
    let get = client
        .get(format!("{}/v1/upgrade", rig.url))
        .send()
        .await
        .unwrap();
    assert_eq!(get.status().as_u16(), 405);
    let nothing = client
        .get(format!("{}/../../etc/passwd", rig.url))
        .send()
        .await
        .unwrap();
    assert_eq!(nothing.status().as_u16(), 404);
}

#[tokio::test]
async fn a_bad_request_costs_the_client_its_connection_under_pressure() {
    let rig = Rig::start("").await;
    // Without pressure a 401 keeps its keep-alive connection (cheaper for both sides).
    let relaxed = raw_keep_alive(
        &rig,
        b"POST /v1/upgrade HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}",
    )
    .await;
    assert!(status_line(&relaxed).contains("401"), "{relaxed}");
    assert!(
        !relaxed.to_ascii_lowercase().contains("connection: close"),
        "{relaxed}"
    );
    // Half the connection slots held open: now a 401 ends its connection.
    let mut held = Vec::new();
    for _ in 0..nixos_hydra_upgrade::http::serve::PRESSURE_CONNECTIONS {
        held.push(TcpStream::connect(addr(&rig)).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    let answer = raw(
        &rig,
        b"POST /v1/upgrade HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}",
    )
    .await;
    assert!(status_line(&answer).contains("401"), "{answer}");
    assert!(answer.to_ascii_lowercase().contains("connection: close"));
    assert!(started.elapsed() < Duration::from_secs(2), "closed at once");
    let mut stream = TcpStream::connect(addr(&rig)).await.unwrap();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 512];
    let n = stream.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).contains("200"));
    let more = tokio::time::timeout(Duration::from_millis(500), stream.read(&mut buf)).await;
    assert!(more.is_err(), "a good request keeps its connection open");
}
