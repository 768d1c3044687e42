//! Load test (run by `bench/flood`): one of three floods from 127.0.0.2 — `wrk` with bad
//! signatures, connections that send only a POST head, or slow readers that pipeline status
//! requests and never read — while one valid signed notification is sent from 127.0.0.1
//! mid-flood; reports the flood, the valid one's outcome and the agent's memory. Loopback only,
//! bounded in time.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Stdio;
use std::time::{Duration, Instant};

use nixos_hydra_upgrade::hydra::sim::HydraSim;
use nixos_hydra_upgrade::signature::{Keys, generate_id, generate_secret};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

const WRK_LUA: &str = r#"
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args)
  counts = {}
  local ts = tostring(os.time())
  wrk.method = "POST"
  wrk.body = '{"build": 1}'
  wrk.headers["Content-Type"] = "application/json"
  wrk.headers["webhook-id"] = "msg_flood"
  wrk.headers["webhook-timestamp"] = ts
  wrk.headers["webhook-signature"] = "v1,AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="
end
function response(status, headers, body) counts[status] = (counts[status] or 0) + 1 end
function done(summary, latency, requests)
  local total = {}
  for _, t in ipairs(threads) do
    for k, v in pairs(t:get("counts")) do total[k] = (total[k] or 0) + v end
  end
  for k, v in pairs(total) do io.write(string.format("status %d %d\n", k, v)) end
  io.write(string.format("errors connect %d read %d write %d timeout %d status %d\n",
    summary.errors.connect, summary.errors.read, summary.errors.write,
    summary.errors.timeout, summary.errors.status))
end
"#;

const FAKE_REBUILD: &str = "#!/bin/sh\ndir=$(dirname \"$0\")\nwhile [ $# -gt 0 ]; do\n  \
    [ \"$1\" = --store-path ] && ln -sfn \"$2\" \"$dir/current-system\"\n  shift\ndone\n";

fn memory(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let agent_bin = args.next().expect(
        "usage: flood AGENT_BIN [SECONDS] [CONNECTIONS] [bad-signature|head-only|slow-readers]",
    );
    let seconds: u64 = args.next().map_or(20, |s| s.parse().unwrap()).min(120);
    let connections: u64 = args.next().map_or(256, |s| s.parse().unwrap()).min(1000);
    let mode = args.next().unwrap_or_else(|| "bad-signature".into());
    let hold = match mode.as_str() {
        "bad-signature" => None,
        "head-only" => Some(HEAD_ONLY),
        "slow-readers" => Some(SLOW_READER),
        other => panic!("unknown flood {other:?}: bad-signature, head-only or slow-readers"),
    };

    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let hydra = HydraSim::start().await.unwrap();
    let path = hydra.succeed(4821, "infra", "main", "web1", 912);
    let secret = generate_secret();
    std::fs::write(root.join("secret"), format!("{secret}\n")).unwrap();
    let keys = Keys::parse(&secret).unwrap();
    std::fs::write(root.join("nixos-rebuild"), FAKE_REBUILD).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(
        root.join("nixos-rebuild"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    std::os::unix::fs::symlink("/nix/store/old", root.join("current-system")).unwrap();
    std::fs::write(root.join("lua"), WRK_LUA).unwrap();
    let config = format!(
        "host = \"web1\"\nlisten = \"127.0.0.1:0\"\nsecret_file = \"{r}/secret\"\nstate_dir = \"{r}/state\"\n\
         dates = \"\"\n[hydra]\ninstance = \"{}\"\nproject = \"infra\"\njobset = \"main\"\n\
         [system]\nnix = \"{r}/no-nix\"\nnixos_rebuild = \"{r}/nixos-rebuild\"\ncurrent_system = \"{r}/current-system\"\n\
         booted_system = \"{r}/current-system\"\nsystem_profile = \"{r}/current-system\"\n",
        hydra.url(),
        r = root.display()
    );
    std::fs::write(root.join("agent.toml"), config).unwrap();

    let mut agent = Command::new(&agent_bin)
        .args(["serve", "--config"])
        .arg(root.join("agent.toml"))
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let pid = agent.id().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let stdout = agent.stdout.take().unwrap();
    let log_lines = tokio::spawn(async move {
        let mut tx = Some(tx);
        let mut lines = BufReader::new(stdout).lines();
        let mut count = 0u64;
        while let Ok(Some(line)) = lines.next_line().await {
            count += 1;
            if line.contains("\"agent started\"")
                && let Ok(v) = serde_json::from_str::<serde_json::Value>(&line)
                && let Some(tx) = tx.take()
            {
                let _ = tx.send(v["listen"].as_str().unwrap_or_default().to_owned());
            }
        }
        count
    });
    let listen = tokio::time::timeout(Duration::from_secs(10), rx)
        .await
        .unwrap()
        .unwrap();
    assert!(listen.starts_with("127."), "loopback only: {listen}");
    let url = format!("http://{listen}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = memory(pid);

    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let holder = hold.map(|request| {
        let target = listen.clone();
        tokio::spawn(hold_connections(
            target,
            request,
            connections as usize,
            deadline,
        ))
    });
    let wrk = hold.is_none().then(|| {
        Command::new("wrk")
            .arg(format!("-t{threads}"))
            .arg(format!("-c{connections}"))
            .arg(format!("-d{seconds}s"))
            .args(["--timeout", "5s", "--latency", "-s"])
            .arg(root.join("lua"))
            .arg(format!("{url}/v1/upgrade"))
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("wrk (apt-get install wrk)")
    });

    // Mid-flood: one valid notification, as `notify` would send it.
    let sampler_peak = tokio::spawn(async move {
        let mut peak = 0;
        for _ in 0..seconds * 4 {
            tokio::time::sleep(Duration::from_millis(250)).await;
            peak = peak.max(memory(pid).0);
        }
        peak
    });
    tokio::time::sleep(Duration::from_secs(seconds / 2)).await;
    let body = serde_json::json!({
        "event": "buildFinished", "build": 4821, "finished": true, "buildStatus": 0,
        "project": "infra", "jobset": "main", "job": "web1"
    })
    .to_string();
    let id = generate_id();
    let now = jiff::Timestamp::now().as_second();
    let sent = Instant::now();
    // From 127.0.0.3: Hydra is another address than the attacker's (wrk's 127.0.0.1, or the
    // holders' 127.0.0.2), as it would be on a network.
    let client = reqwest::Client::builder()
        .local_address(std::net::IpAddr::from([127, 0, 0, 3]))
        .build()
        .unwrap();
    let response = client
        .post(format!("{url}/v1/upgrade"))
        .header("webhook-id", &id)
        .header("webhook-timestamp", now.to_string())
        .header("webhook-signature", keys.sign(&id, now, body.as_bytes()))
        .body(body)
        .timeout(Duration::from_secs(30))
        .send()
        .await;
    let answered = sent.elapsed();
    let (code, answer) = match response {
        Ok(r) => (r.status().as_u16(), r.text().await.unwrap_or_default()),
        Err(e) => (0, e.to_string()),
    };
    let mut deployed = serde_json::Value::Null;
    for _ in 0..200 {
        let status: serde_json::Value = client
            .get(format!("{url}/v1/status"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if !status["deployed"].is_null() {
            deployed = status["deployed"].clone();
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let deployed_at = sent.elapsed();

    let flood_report = match (wrk, holder) {
        (Some(wrk), _) => {
            let output =
                tokio::time::timeout(Duration::from_secs(seconds + 30), wrk.wait_with_output())
                    .await
                    .unwrap()
                    .unwrap();
            String::from_utf8_lossy(&output.stdout).into_owned()
        }
        (None, Some(holder)) => holder.await.unwrap().to_string(),
        (None, None) => String::new(),
    };
    let peak = sampler_peak.await.unwrap();
    let after = memory(pid);
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let exit = tokio::time::timeout(Duration::from_secs(10), agent.wait()).await;
    let logged = log_lines.await.unwrap_or(0);

    if hold.is_none() {
        println!(
            "## wrk ({threads} threads, {connections} connections, {seconds} s, bad signatures)"
        );
    } else {
        println!("## {mode} from 127.0.0.2: {connections} connections kept open for {seconds} s");
    }
    println!("{flood_report}");
    println!("## valid notification sent after {} s", seconds / 2);
    println!("answer: {code} in {answered:?}: {answer}");
    println!("deployed: {deployed} (status showed it {deployed_at:?} after sending)");
    println!("expected path: {path}");
    println!("## agent memory (kB)");
    println!(
        "before: VmRSS {} VmHWM {}; during: peak VmRSS {peak}; after: VmRSS {} VmHWM {}",
        before.0, before.1, after.0, after.1
    );
    println!("agent log lines: {logged}; exit after SIGTERM: {exit:?}");
    let ok = code == 202 && deployed["build"] == 4821;
    println!("RESULT: {}", if ok { "PASS" } else { "FAIL" });
    if !ok {
        std::process::exit(1);
    }
}

/// A POST head announcing a body that never comes.
const HEAD_ONLY: &[u8] = b"POST /v1/upgrade HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n";
/// Pipelined status requests: their answers fill the send queue of a reader that never reads.
const SLOW_READER: &[u8] = b"GET /v1/status HTTP/1.1\r\nHost: x\r\n\r\n";

/// What the attacker saw.
#[derive(Default)]
struct HoldReport {
    opened: u64,
    /// Answered 503 and closed at once: over the per-address cap.
    refused: u64,
    /// Head-only: answered (503, the request timeout) or closed later by the agent.
    answered_later: u64,
    /// Slow readers admitted and still open at the end / cut by the agent before it.
    still_open_at_end: u64,
    cut_before_end: u64,
}

impl std::fmt::Display for HoldReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "connections opened {}; refused at once (503, over the per-address cap) {}; \
             head-only answered or closed later {}; slow readers cut by the agent {}, \
             still open at the end {}",
            self.opened,
            self.refused,
            self.answered_later,
            self.cut_before_end,
            self.still_open_at_end
        )
    }
}

async fn open_from_127_0_0_2(
    address: std::net::SocketAddr,
    payload: &[u8],
) -> Option<tokio::net::TcpStream> {
    use tokio::io::AsyncWriteExt;
    let socket = tokio::net::TcpSocket::new_v4().ok()?;
    socket.bind("127.0.0.2:0".parse().ok()?).ok()?;
    let mut stream = socket.connect(address).await.ok()?;
    let _ = tokio::time::timeout(Duration::from_millis(20), stream.write_all(payload)).await;
    Some(stream)
}

/// Whether the agent refused `stream` at once: its first bytes are a 503 (read only when that
/// answer is already there, so a slow reader's queue is left alone).
async fn refused_at_once(stream: &tokio::net::TcpStream) -> bool {
    let mut buf = [0u8; 12];
    let peeked = tokio::time::timeout(Duration::from_millis(200), stream.peek(&mut buf)).await;
    matches!(peeked, Ok(Ok(n)) if buf[..n].starts_with(b"HTTP/1.1 503"))
}

/// Tries to keep `count` connections from 127.0.0.2 open until `deadline`, each sending
/// `request` (pipelined 100 times for slow readers) and never reading an answer; refused ones
/// are replaced at once, head-only ones the agent answers or closes each second.
async fn hold_connections(
    target: String,
    request: &'static [u8],
    count: usize,
    deadline: Instant,
) -> HoldReport {
    use tokio::io::AsyncReadExt;
    let slow_reader = request == SLOW_READER;
    let payload: Vec<u8> = if slow_reader {
        request.repeat(100)
    } else {
        request.to_vec()
    };
    let address: std::net::SocketAddr = target.parse().unwrap();
    let mut report = HoldReport::default();
    let mut open = Vec::new();
    while Instant::now() < deadline {
        while open.len() < count && Instant::now() < deadline {
            let Some(stream) = open_from_127_0_0_2(address, &payload).await else {
                break;
            };
            report.opened += 1;
            if refused_at_once(&stream).await {
                report.refused += 1;
            } else {
                open.push(stream);
            }
        }
        // Refused connections are not kept, so the loop above keeps opening new ones until the
        // deadline, as a persistent attacker would: whenever the agent cuts one, another takes
        // its slot. Slow readers are only looked at once, at the end.
        if slow_reader {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        let mut still = Vec::new();
        for stream in open.drain(..) {
            let mut buf = [0u8; 256];
            match stream.try_read(&mut buf) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => still.push(stream),
                _ => report.answered_later += 1,
            }
        }
        open = still;
    }
    if slow_reader {
        for mut stream in open {
            let mut rest = Vec::new();
            let ended =
                tokio::time::timeout(Duration::from_millis(500), stream.read_to_end(&mut rest))
                    .await;
            if ended.is_ok() {
                report.cut_before_end += 1;
            } else {
                report.still_open_at_end += 1;
            }
        }
    }
    report
}
