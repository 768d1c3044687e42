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

/// A connection to the agent from `source` (a 127.0.0.0/8 address: each is its own peer).
async fn connect_from(source: &str, rig: &Rig) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(format!("{source}:0").parse().unwrap()).unwrap();
    socket.connect(addr(rig).parse().unwrap()).await.unwrap()
}

/// Whether the agent refused `stream` (its 503 then the end), within a second.
async fn refused(stream: &mut TcpStream) -> bool {
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(1), stream.read_to_end(&mut answer)).await;
    matches!(read, Ok(Ok(_))) && String::from_utf8_lossy(&answer).contains("503")
}

#[tokio::test]
async fn one_address_cannot_take_every_slot() {
    let rig = Rig::start("").await;
    let cap = nixos_hydra_upgrade::http::serve::MAX_PER_PEER;
    let mut held = Vec::new();
    for _ in 0..600 {
        held.push(connect_from("127.0.0.2", &rig).await);
    }
    // A client from another address is served at once (it does not wait for a slot).
    let served = tokio::time::timeout(Duration::from_secs(10), rig.status())
        .await
        .expect("served while 127.0.0.2 holds all it may");
    assert_eq!(served["phase"], "idle");
    let mut refusals = 0;
    for stream in held.iter_mut().skip(cap) {
        refusals += usize::from(refused(stream).await);
    }
    assert_eq!(
        refusals,
        600 - cap,
        "every connection over the per-address cap is refused"
    );
    let first = held.first_mut().unwrap();
    first
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 256];
    let n = first.read(&mut buf).await.unwrap();
    assert!(
        String::from_utf8_lossy(&buf[..n]).contains("200"),
        "the admitted ones are served"
    );
}

#[tokio::test]
async fn when_every_slot_is_taken_a_light_peer_evicts_the_heaviest() {
    use nixos_hydra_upgrade::http::serve::{MAX_CONNECTIONS, MAX_PER_PEER};
    let rig = Rig::start("").await;
    let peers = MAX_CONNECTIONS / MAX_PER_PEER;
    let mut held = Vec::new();
    for peer in 0..peers {
        let source = format!("127.0.0.{}", 2 + peer);
        for _ in 0..MAX_PER_PEER {
            held.push(connect_from(&source, &rig).await);
        }
    }
    // Accepted in order: once one over the cap is refused, all before it were admitted.
    let mut probe = connect_from("127.0.0.2", &rig).await;
    assert!(refused(&mut probe).await, "the table is full");
    let served = tokio::time::timeout(Duration::from_secs(10), rig.status())
        .await
        .expect("a light peer gets a slot at once");
    assert_eq!(served["phase"], "idle");
    // Looked at all at once, well within the 10 s the idle ones have before the header timeout.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let closed = held
        .iter()
        .filter(|stream| {
            let mut buf = [0u8; 16];
            !matches!(stream.try_read(&mut buf), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
        })
        .count();
    assert!(closed >= 1, "a heavy peer's connection made room");
    assert!(closed <= 2, "only as many as were needed: {closed}");
}

#[tokio::test]
async fn head_only_requests_from_one_address_do_not_stop_notify() {
    let rig = Rig::start("").await;
    rig.build(7);
    let mut held = Vec::new();
    for _ in 0..600 {
        let mut stream = connect_from("127.0.0.2", &rig).await;
        let _ = stream
            .write_all(b"POST /v1/upgrade HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n")
            .await;
        held.push(stream);
    }
    let started = Instant::now();
    let (code, answer) = notify(&rig, 7).await;
    assert!((200..300).contains(&code), "{code} {answer}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    // A request whose body never comes is answered within the request timeout, in JSON.
    let mut answer = vec![0u8; 1024];
    let n = tokio::time::timeout(Duration::from_secs(40), held[0].read(&mut answer))
        .await
        .expect("answered within the request timeout")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert!(status_line(&answer).contains("503"), "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("retry-after: "),
        "{answer}"
    );
    assert!(answer.contains("\"status\":\"unavailable\""), "{answer}");
}

/// Runs the real `notify` for a RunCommand payload of `build`: its first answer line, parsed.
async fn notify(rig: &Rig, build: u64) -> (u16, String) {
    std::fs::write(
        rig.path("hydra.json"),
        common::runcommand_payload(build, 0, common::JOB),
    )
    .unwrap();
    let output = tokio::process::Command::new(common::BIN)
        .args(["notify", "--url", &rig.url, "--secret-file"])
        .arg(rig.path("secret"))
        .arg("--hydra-json")
        .arg(rig.path("hydra.json"))
        .output()
        .await
        .unwrap();
    let line = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    // "<url>/v1/upgrade: 202 queued build 7"
    let code = line
        .split(": ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, line)
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
    // Half the connection slots held open (from several addresses: each has a cap of its
    // own): now a 401 ends its connection.
    let mut held = Vec::new();
    let per_peer = nixos_hydra_upgrade::http::serve::MAX_PER_PEER;
    for i in 0..nixos_hydra_upgrade::http::serve::PRESSURE_CONNECTIONS {
        held.push(connect_from(&format!("127.0.0.{}", 2 + i / per_peer), &rig).await);
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

/// A network namespace of its own with loopback up and tiny TCP buffers, so a client that does
/// not read fills the agent's send queue after a few answers; deleted on drop.
struct SmallBuffersNetns(String);

impl SmallBuffersNetns {
    fn new() -> Self {
        let name = format!("nhu-slow-{}", std::process::id());
        let ns = SmallBuffersNetns(name);
        run(&["ip", "netns", "add", &ns.0]);
        run(&["ip", "-n", &ns.0, "link", "set", "lo", "up"]);
        for key in [
            "net.ipv4.tcp_wmem=4096 4096 4096",
            "net.ipv4.tcp_rmem=4096 4096 4096",
        ] {
            run(&["ip", "netns", "exec", &ns.0, "sysctl", "-q", "-w", key]);
        }
        ns
    }

    /// Established TCP connections whose local port is `port`, as the kernel of the namespace
    /// sees them (the agent's side).
    fn established(&self, port: &str) -> usize {
        let out = std::process::Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.0,
                "ss",
                "-Htn",
                "state",
                "established",
            ])
            .arg(format!("sport = :{port}"))
            .output()
            .expect("ss (iproute2) is needed");
        String::from_utf8_lossy(&out.stdout).lines().count()
    }
}

impl Drop for SmallBuffersNetns {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &self.0])
            .status();
    }
}

fn run(argv: &[&str]) {
    let status = std::process::Command::new(argv[0])
        .args(&argv[1..])
        .status()
        .unwrap_or_else(|e| panic!("{argv:?}: {e} (needs root and iproute2)"));
    assert!(status.success(), "{argv:?} failed: {status}");
}

/// Needs root and iproute2: fails (does not skip) without them.
#[test]
fn slow_readers_and_head_only_requests_do_not_stop_notify() {
    let ns = std::sync::Arc::new(SmallBuffersNetns::new());
    let path = format!("/run/netns/{}", ns.0);
    let inside = ns.clone();
    // Everything (Hydra simulator, agent, attacker, notify) runs in the namespace: the thread
    // joins it, and processes it starts inherit it.
    let thread = std::thread::spawn(move || {
        let file = std::fs::File::open(&path).unwrap();
        nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(slow_readers_inside(&inside));
    });
    thread.join().expect("the test inside the namespace failed");
}

async fn slow_readers_inside(ns: &SmallBuffersNetns) {
    let rig = Rig::start("").await;
    rig.build(7);
    let port = addr(&rig).rsplit(':').next().unwrap().to_owned();
    // Slow readers: many pipelined status requests, never a byte read back.
    let pipelined = "GET /v1/status HTTP/1.1\r\nHost: x\r\n\r\n".repeat(100);
    let mut slow = Vec::new();
    for _ in 0..600 {
        let mut stream = connect_from("127.0.0.2", &rig).await;
        let _ = tokio::time::timeout(
            Duration::from_millis(50),
            stream.write_all(pipelined.as_bytes()),
        )
        .await;
        slow.push(stream);
    }
    let mut head_only = Vec::new();
    for _ in 0..600 {
        let mut stream = connect_from("127.0.0.2", &rig).await;
        let _ = stream
            .write_all(b"POST /v1/upgrade HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n")
            .await;
        head_only.push(stream);
    }
    let stuck = ns.established(&port);
    assert!(stuck >= 32, "the slow readers hold connections: {stuck}");
    let started = Instant::now();
    let (code, answer) = notify(&rig, 7).await;
    assert!((200..300).contains(&code), "{code} {answer}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    // A reader that takes no byte for the write timeout loses its connection.
    let limit = nixos_hydra_upgrade::http::serve::WRITE_STALL_TIMEOUT;
    tokio::time::sleep(limit + Duration::from_secs(3)).await;
    let slow_left = ns.established(&port);
    assert!(
        slow_left < stuck,
        "stalled writers are cut after {limit:?}: {stuck} then {slow_left}"
    );
    drop(slow);
    drop(head_only);
}
