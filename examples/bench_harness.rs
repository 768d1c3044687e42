//! Benchmark harness driven by `bench/run` (not by `cargo test`): each subcommand prints
//! `key value` lines that the script turns into the BENCHMARKS.md table.
//!
//! - `accept`: p50/p99 from a signed notification leaving the sender to the fake `nixos-rebuild`
//!   starting, against the in-process Hydra simulator, optionally under a `wrk` flood.
//! - `idle`: RSS after start, CPU used over an idle minute, RSS after 10,000 requests.
//! - `start`: exec of `serve` to the first `200` from `/healthz`.
//! - `health`: 256 answering + N silent ICMP canaries in network namespaces, concurrent
//!   (`run_phase`) vs one after another.
//! - `sink`: many loopback listeners that answer like an agent, for `notify`.
//!
//! Network: loopback and addresses inside namespaces this harness creates, nothing else. Every
//! loop is bounded in count and time.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::sched::{CloneFlags, setns};
use nixos_hydra_upgrade::health::{Check, CheckKind, run_phase};
use nixos_hydra_upgrade::hydra::sim::HydraSim;
use nixos_hydra_upgrade::signature::{Keys, generate_id, generate_secret};

const PROJECT: &str = "infra";
const JOBSET: &str = "main";
const JOB: &str = "web1";

fn main() {
    // Started by the agent as its `nixos-rebuild` (a symlink to this binary): stamp the wall
    // clock first thing and succeed. A compiled stamp costs one exec, where a `date +%s.%N` shell
    // script costs two (sh, then date) and 1.5 to 10 ms on this shared machine.
    if let Some(argv0) = std::env::args_os().next().map(PathBuf::from)
        && argv0.file_name().is_some_and(|n| n == "nixos-rebuild")
    {
        let stamp = format!("{:.9}\n", unix_now());
        let starts = argv0.with_file_name("starts");
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(starts)
            .unwrap();
        file.write_all(stamp.as_bytes()).unwrap();
        return;
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    let flag = |name: &str| -> Option<String> {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1).cloned())
    };
    let num = |name: &str, default: u64| flag(name).map_or(default, |v| v.parse().unwrap());
    let agent = || PathBuf::from(flag("--agent").expect("--agent BIN"));
    match args.first().map(String::as_str) {
        Some("accept") => runtime(2).block_on(accept(
            agent(),
            flag("--listen").expect("--listen 127.0.0.1:PORT"),
            num("--samples", 100) as usize,
            flag("--flood-lua"),
            num("--flood-connections", 32),
        )),
        Some("idle") => runtime(2).block_on(idle(
            agent(),
            num("--agents", 3) as usize,
            num("--seconds", 60),
            num("--requests", 10_000) as usize,
        )),
        Some("start") => start(&agent(), num("--runs", 20) as usize),
        Some("health") => health(
            &flag("--netns").expect("--netns NAME"),
            num("--canaries", 256) as usize,
            num("--silent", 1) as usize,
            num("--unassigned", 0) as usize,
            num("--runs", 3) as usize,
        ),
        Some("sink") => runtime(2).block_on(sink(
            num("--listeners", 200) as usize,
            num("--expect", 200) as usize,
            num("--seconds", 60),
            PathBuf::from(flag("--urls-file").expect("--urls-file F")),
        )),
        _ => {
            eprintln!("usage: bench_harness accept|idle|start|health|sink …");
            std::process::exit(2);
        }
    }
}

fn runtime(workers: usize) -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
        .unwrap()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// A config for `serve` on `listen` in `dir`, dry-run unless `rebuild` is given.
fn write_config(dir: &Path, listen: &str, hydra: &str, rebuild: Option<&Path>) -> PathBuf {
    let secret = generate_secret();
    std::fs::write(dir.join("secret"), format!("{secret}\n")).unwrap();
    let _ = std::os::unix::fs::symlink(
        "/nix/store/00000000000000000000000000000000-nixos-system-web1-old",
        dir.join("current-system"),
    );
    let system = match rebuild {
        Some(path) => format!("nixos_rebuild = \"{}\"\n", path.display()),
        None => String::new(),
    };
    let text = format!(
        "host = \"{JOB}\"\nlisten = \"{listen}\"\nsecret_file = \"{secret}\"\nstate_dir = \"{state}\"\n\
         dates = \"\"\ndry_run = {dry}\nlog_format = \"json\"\n\
         [hydra]\ninstance = \"{hydra}\"\nproject = \"{PROJECT}\"\njobset = \"{JOBSET}\"\ntimeout = \"2s\"\n\
         [system]\n{system}current_system = \"{cur}\"\nbooted_system = \"{cur}\"\nsystem_profile = \"{cur}\"\n\
         nix = \"{no_nix}\"\n",
        secret = dir.join("secret").display(),
        state = dir.join("state").display(),
        // No closure diff: this machine's real nix would look for the fake paths in caches.
        no_nix = dir.join("no-nix").display(),
        dry = rebuild.is_none(),
        cur = dir.join("current-system").display(),
    );
    let path = dir.join("agent.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// Starts `serve`; its JSON log goes to `agent.log` beside the config (a file, so the cost of
/// writing one line per request stays in the figures; journald would cost more).
fn spawn_agent(bin: &Path, config: &Path) -> Child {
    let log = File::create(config.with_file_name("agent.log")).unwrap();
    Command::new(bin)
        .args(["serve", "--config"])
        .arg(config)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap()
}

fn stop_agent(mut child: Child) {
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    for _ in 0..500 {
        if child.try_wait().unwrap().is_some() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// One blocking `GET path` on a fresh connection; true on a 200.
fn get_200(address: &str, path: &str) -> bool {
    let Ok(mut stream) = TcpStream::connect(address) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let request = format!("GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n");
    if stream.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).is_ok() && &head[9..12] == b"200"
}

fn wait_healthy(address: &str, limit: Duration) -> Option<Duration> {
    let started = Instant::now();
    while started.elapsed() < limit {
        if get_200(address, "/healthz") {
            return Some(started.elapsed());
        }
        std::thread::sleep(Duration::from_micros(100));
    }
    None
}

// ---------------------------------------------------------------------------------------------
// accept latency

async fn accept(
    bin: PathBuf,
    listen: String,
    samples: usize,
    flood_lua: Option<String>,
    flood_connections: u64,
) {
    let listen_addr: SocketAddr = listen.parse().unwrap();
    assert!(listen_addr.ip().is_loopback(), "loopback only");
    let dir = tempfile::tempdir().unwrap();
    // The fake nixos-rebuild is this binary under that name (see `main`).
    let rebuild = dir.path().join("nixos-rebuild");
    std::os::unix::fs::symlink(std::env::current_exe().unwrap(), &rebuild).unwrap();
    let starts = dir.path().join("starts");

    // Floor: what starting the fake itself costs (fork, exec, stamp), measured the same way,
    // from this process: the part of the latency that is not the agent's.
    // It stamps into its own directory's `starts`, so it lives in a subdirectory.
    let floor_dir = dir.path().join("floor");
    std::fs::create_dir(&floor_dir).unwrap();
    let floor_rebuild = floor_dir.join("nixos-rebuild");
    std::os::unix::fs::symlink(std::env::current_exe().unwrap(), &floor_rebuild).unwrap();
    let floor_starts = floor_dir.join("starts");
    let mut floor = Vec::new();

    let hydra = HydraSim::start().await.unwrap();
    let config = write_config(dir.path(), &listen, &hydra.url(), Some(&rebuild));
    let keys = Keys::load(&dir.path().join("secret")).unwrap();
    let child = spawn_agent(&bin, &config);
    let base = format!("http://{listen}");
    wait_healthy(&listen, Duration::from_secs(10)).expect("agent did not come up");

    let mut flood = flood_lua.map(|lua| {
        let child = Command::new("wrk")
            .args([
                "-t1",
                &format!("-c{flood_connections}"),
                "-d60s",
                "-s",
                &lua,
            ])
            .arg(format!("{base}/v1/upgrade"))
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("wrk");
        std::thread::sleep(Duration::from_millis(1000));
        child
    });

    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let mut latencies = Vec::new();
    let mut sent_at = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(50);
    for i in 0..samples {
        if Instant::now() > deadline {
            break;
        }
        let build = 1000 + i as u64;
        hydra.succeed(build, PROJECT, JOBSET, JOB, build / 10);
        let body = format!(
            "{{\"event\":\"buildFinished\",\"build\":{build},\"finished\":true,\"buildStatus\":0,\
             \"project\":\"{PROJECT}\",\"jobset\":\"{JOBSET}\",\"job\":\"{JOB}\"}}"
        );
        let id = generate_id();
        let sent = unix_now();
        let ts = sent as i64;
        let answer = client
            .post(format!("{base}/v1/upgrade"))
            .header("webhook-id", &id)
            .header("webhook-timestamp", ts.to_string())
            .header("webhook-signature", keys.sign(&id, ts, body.as_bytes()))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status().as_u16(), 202, "build {build} not queued");
        // Wait for the stamp of this attempt, then for the attempt to be recorded, so the next
        // notification finds the worker idle.
        let waited = Instant::now();
        while lines(&starts) < i + 1 {
            assert!(waited.elapsed() < Duration::from_secs(10), "no activation");
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        latencies.push((last_stamp(&starts) - sent) * 1000.0);
        sent_at.push((build, sent, last_stamp(&starts)));
        // The floor of this moment: the harness starting the same fake itself.
        let direct = unix_now();
        Command::new(&floor_rebuild).status().unwrap();
        floor.push((last_stamp(&floor_starts) - direct) * 1000.0);
        loop {
            let status: serde_json::Value = client
                .get(format!("{base}/v1/status"))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            if status["last_attempt"]["build"] == build && status["phase"] == "idle" {
                break;
            }
            assert!(
                waited.elapsed() < Duration::from_secs(10),
                "attempt never ended"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    if let Some(mut wrk) = flood.take() {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(wrk.id() as i32),
            nix::sys::signal::Signal::SIGINT,
        );
        let mut out = String::new();
        let _ = wrk.stdout.take().unwrap().read_to_string(&mut out);
        let _ = wrk.wait();
        let rps = out
            .lines()
            .find_map(|l| l.strip_prefix("Requests/sec:"))
            .map_or("?".into(), |s| s.trim().to_owned());
        println!("flood_rps {rps}");
    }
    stop_agent(child);
    stages(&config.with_file_name("agent.log"), &sent_at);
    floor.sort_by(f64::total_cmp);
    println!("floor_p50_ms {:.3}", percentile(&floor, 50.0));
    println!("floor_p99_ms {:.3}", percentile(&floor, 99.0));
    latencies.sort_by(f64::total_cmp);
    println!("samples {}", latencies.len());
    println!("p50_ms {:.3}", percentile(&latencies, 50.0));
    println!("p99_ms {:.3}", percentile(&latencies, 99.0));
    println!(
        "max_ms {:.3}",
        latencies.last().copied().unwrap_or(f64::NAN)
    );
}

/// Where the time goes, from the agent's own log lines (`queued` after Hydra verified the build,
/// `attempt started` in the worker, `running` just before the spawn): p50 and p99 of each stage.
fn stages(log: &Path, samples: &[(u64, f64, f64)]) {
    let mut at: std::collections::HashMap<(u64, &'static str), f64> = Default::default();
    for line in std::fs::read_to_string(log).unwrap_or_default().lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let Some(build) = v["build"].as_u64() else {
            continue;
        };
        let stage = match v["message"].as_str() {
            Some("queued") => "queued",
            Some("attempt started") => "started",
            Some("running") => "running",
            _ => continue,
        };
        if let Some(t) = v["timestamp"]
            .as_str()
            .and_then(|t| t.parse::<jiff::Timestamp>().ok())
        {
            at.insert((build, stage), t.as_nanosecond() as f64 / 1e9);
        }
    }
    let names = [
        "send_to_queued",
        "queued_to_worker",
        "worker_to_spawn",
        "spawn_to_stamp",
    ];
    let mut spans: Vec<Vec<f64>> = vec![Vec::new(); names.len()];
    for &(build, sent, stamp) in samples {
        let (Some(q), Some(w), Some(r)) = (
            at.get(&(build, "queued")),
            at.get(&(build, "started")),
            at.get(&(build, "running")),
        ) else {
            continue;
        };
        for (i, (a, b)) in [(sent, *q), (*q, *w), (*w, *r), (*r, stamp)]
            .into_iter()
            .enumerate()
        {
            spans[i].push((b - a) * 1000.0);
        }
    }
    for (name, mut v) in names.iter().zip(spans) {
        if v.is_empty() {
            continue;
        }
        v.sort_by(f64::total_cmp);
        println!("stage_{name}_p50_ms {:.3}", percentile(&v, 50.0));
        println!("stage_{name}_p99_ms {:.3}", percentile(&v, 99.0));
    }
}

fn lines(path: &Path) -> usize {
    std::fs::read_to_string(path).map_or(0, |s| s.lines().count())
}

fn last_stamp(path: &Path) -> f64 {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .last()
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

// ---------------------------------------------------------------------------------------------
// idle cost

fn status_kib(pid: u32, key: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next())
        .unwrap()
        .parse()
        .unwrap()
}

/// CPU time of every thread of `pid`, in nanoseconds (schedstat: exact, unlike the 10 ms ticks
/// of utime+stime), and utime+stime in ticks for comparison.
fn cpu(pid: u32) -> (u64, u64) {
    let mut ns = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let path = task.unwrap().path().join("schedstat");
        if let Ok(text) = std::fs::read_to_string(path) {
            ns += text
                .split_whitespace()
                .next()
                .unwrap_or("0")
                .parse::<u64>()
                .unwrap_or(0);
        }
    }
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // Fields 14 and 15 of stat(5); `after` starts at field 3.
    let ticks = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    (ns, ticks)
}

async fn idle(bin: PathBuf, agents: usize, seconds: u64, requests: usize) {
    let hydra = HydraSim::start().await.unwrap();
    let mut running = Vec::new();
    for _ in 0..agents {
        let dir = tempfile::tempdir().unwrap();
        let listen = format!("127.0.0.1:{}", free_port());
        let config = write_config(dir.path(), &listen, &hydra.url(), None);
        let child = spawn_agent(&bin, &config);
        wait_healthy(&listen, Duration::from_secs(10)).expect("agent did not come up");
        running.push((dir, listen, child));
    }
    // Let start-up work (state file, first log lines) finish before the idle minute.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before: Vec<_> = running.iter().map(|(_, _, c)| cpu(c.id())).collect();
    for (_, _, c) in &running {
        println!("rss_start_kib {}", status_kib(c.id(), "VmRSS:"));
        // Private heap/stacks vs pages of the (shared, read-only) binary.
        println!("rss_start_anon_kib {}", status_kib(c.id(), "RssAnon:"));
        println!("rss_start_file_kib {}", status_kib(c.id(), "RssFile:"));
        println!("threads {}", status_kib(c.id(), "Threads:"));
    }
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    for ((_, _, c), (ns0, t0)) in running.iter().zip(before) {
        let (ns1, t1) = cpu(c.id());
        let per_minute = 60.0 / seconds as f64;
        println!(
            "idle_cpu_ms_per_min {:.3}",
            (ns1 - ns0) as f64 / 1e6 * per_minute
        );
        println!(
            "idle_cpu_ticks_ms_per_min {:.1}",
            (t1 - t0) as f64 * 10.0 * per_minute
        );
    }
    // 10,000 requests: half GET /healthz, half bad-signature POSTs (HMAC checked, 401, one log
    // line each), 16 connections at a time.
    for (_, listen, c) in &running {
        let client = reqwest::Client::new();
        let done = Arc::new(AtomicUsize::new(0));
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..16 {
            let (client, done, base) = (client.clone(), done.clone(), format!("http://{listen}"));
            tasks.spawn(async move {
                loop {
                    let n = done.fetch_add(1, Ordering::Relaxed);
                    if n >= requests {
                        break;
                    }
                    let request = if n % 2 == 0 {
                        client.get(format!("{base}/healthz"))
                    } else {
                        let ts = unix_now() as i64;
                        client
                            .post(format!("{base}/v1/upgrade"))
                            .header("webhook-id", format!("msg_{n}"))
                            .header("webhook-timestamp", ts.to_string())
                            .header(
                                "webhook-signature",
                                "v1,AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
                            )
                            .body("{\"build\": 1}")
                    };
                    let answer = request.send().await.unwrap();
                    let _ = answer.bytes().await;
                }
            });
        }
        let _ = tokio::time::timeout(Duration::from_secs(60), tasks.join_all()).await;
        println!("rss_after_requests_kib {}", status_kib(c.id(), "VmRSS:"));
        println!("rss_after_anon_kib {}", status_kib(c.id(), "RssAnon:"));
        println!("rss_peak_kib {}", status_kib(c.id(), "VmHWM:"));
    }
    for (_, _, c) in running {
        stop_agent(c);
    }
}

// ---------------------------------------------------------------------------------------------
// start time

fn start(bin: &Path, runs: usize) {
    for _ in 0..runs {
        let dir = tempfile::tempdir().unwrap();
        let listen = format!("127.0.0.1:{}", free_port());
        let config = write_config(dir.path(), &listen, "http://127.0.0.1:9", None);
        // From before fork+exec to the first 200, polling every 0.1 ms.
        let started = Instant::now();
        let child = spawn_agent(bin, &config);
        wait_healthy(&listen, Duration::from_secs(10)).expect("no /healthz");
        let took = started.elapsed();
        println!("start_ms {:.3}", took.as_secs_f64() * 1000.0);
        stop_agent(child);
    }
}

// ---------------------------------------------------------------------------------------------
// health fan-out

fn ip(args: &[&str]) {
    let status = Command::new("ip")
        .args(args)
        .status()
        .expect("ip (iproute2)");
    assert!(status.success(), "ip {}", args.join(" "));
}

fn join_netns(path: &str) {
    let joined = File::open(path)
        .map_err(|e| e.to_string())
        .and_then(|f| setns(&f, CloneFlags::CLONE_NEWNET).map_err(|e| e.to_string()));
    if let Err(e) = joined {
        // Probing from the wrong namespace could reach real addresses: stop everything.
        eprintln!("cannot join network namespace {path}: {e}");
        std::process::abort();
    }
}

/// Two namespaces joined by a veth (as tests/health_netns.rs builds them); the silent side
/// ignores ICMP echo. `bench/run` deletes them afterwards whatever happens here.
fn health(name: &str, canaries: usize, silent: usize, unassigned: usize, runs: usize) {
    let (p, s) = (format!("{name}-p"), format!("{name}-s"));
    ip(&["netns", "add", &p]);
    ip(&["netns", "add", &s]);
    ip(&["-n", &p, "link", "set", "lo", "up"]);
    ip(&["-n", &s, "link", "set", "lo", "up"]);
    ip(&[
        "-n", &p, "link", "add", "nhb0", "type", "veth", "peer", "name", "nhb1", "netns", &s,
    ]);
    ip(&["-n", &p, "addr", "add", "169.254.78.1/24", "dev", "nhb0"]);
    ip(&["-n", &s, "addr", "add", "169.254.78.2/24", "dev", "nhb1"]);
    ip(&["-n", &p, "link", "set", "nhb0", "up"]);
    ip(&["-n", &s, "link", "set", "nhb1", "up"]);
    ip(&[
        "netns",
        "exec",
        &s,
        "sysctl",
        "-q",
        "-w",
        "net.ipv4.icmp_echo_ignore_all=1",
    ]);

    // Answering canaries: loopback addresses of the prober namespace (127.0.0.0/8 all answer).
    // Silent ones: addresses of the silent namespace, which ignores echo requests. `unassigned`
    // more: addresses on the veth that nobody owns (ARP fails; the kernel then reports the host
    // unreachable, about 3 s later).
    let mut hosts: Vec<String> = (0..canaries)
        .map(|i| format!("127.0.{}.{}", i / 250, i % 250 + 1))
        .collect();
    for i in 0..silent {
        let address = format!("169.254.78.{}", i + 2);
        if i > 0 {
            ip(&[
                "-n",
                &s,
                "addr",
                "add",
                &format!("{address}/24"),
                "dev",
                "nhb1",
            ]);
        }
        hosts.push(address);
    }
    hosts.extend((0..unassigned).map(|i| format!("169.254.78.{}", 200 + i)));
    std::thread::sleep(Duration::from_millis(300));
    let checks: Vec<Check> = hosts
        .into_iter()
        .map(|host| Check {
            name: host.clone(),
            kind: CheckKind::Icmp { host },
            timeout: Duration::from_secs(1),
            retries: 0,
            interval: Duration::from_millis(100),
        })
        .collect();

    let path = format!("/run/netns/{p}");
    let thread = std::thread::spawn(move || {
        join_netns(&path);
        let hook = path.clone();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .on_thread_start(move || join_netns(&hook))
            .build()
            .unwrap();
        // Proof we are inside: this address exists only in the prober namespace.
        std::net::UdpSocket::bind("169.254.78.1:0").expect("not inside the prober namespace");
        runtime.block_on(async move {
            for _ in 0..runs {
                let started = Instant::now();
                let results = run_phase(&checks, Duration::from_secs(30)).await;
                let concurrent = started.elapsed();
                check_results("concurrent", &results, canaries);
                let started = Instant::now();
                let mut sequential = Vec::new();
                for check in &checks {
                    sequential.extend(
                        run_phase(std::slice::from_ref(check), Duration::from_secs(30)).await,
                    );
                }
                let one_by_one = started.elapsed();
                check_results("sequential", &sequential, canaries);
                println!("concurrent_s {:.4}", concurrent.as_secs_f64());
                println!("sequential_s {:.4}", one_by_one.as_secs_f64());
            }
        });
    });
    let joined = thread.join();
    let _ = Command::new("ip").args(["netns", "del", &p]).status();
    let _ = Command::new("ip").args(["netns", "del", &s]).status();
    joined.unwrap();
}

fn check_results(what: &str, results: &[nixos_hydra_upgrade::model::CheckResult], canaries: usize) {
    let failed: Vec<_> = results[..canaries].iter().filter(|r| !r.passed).collect();
    if let Some(first) = failed.first() {
        eprintln!(
            "{what}: {} answering canaries failed, e.g. {first:?}",
            failed.len()
        );
        println!("{what}_failed_answering {}", failed.len());
    }
    assert!(
        results[canaries..].iter().all(|r| !r.passed),
        "a silent canary answered"
    );
}

// ---------------------------------------------------------------------------------------------
// notify sink

async fn sink(listeners: usize, expect: usize, seconds: u64, urls_file: PathBuf) {
    let received = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(tokio::sync::Notify::new());
    let mut urls = String::new();
    for _ in 0..listeners {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        urls.push_str(&format!(
            "http://{}/v1/upgrade\n",
            listener.local_addr().unwrap()
        ));
        let (received, done) = (received.clone(), done.clone());
        let app = axum::Router::new().route(
            "/v1/upgrade",
            axum::routing::post(move |body: axum::body::Bytes| {
                let (received, done) = (received.clone(), done.clone());
                async move {
                    assert!(!body.is_empty());
                    if received.fetch_add(1, Ordering::SeqCst) + 1 >= expect {
                        done.notify_one();
                    }
                    (
                        axum::http::StatusCode::ACCEPTED,
                        [("content-type", "application/json")],
                        "{\"status\":\"queued\"}",
                    )
                }
            }),
        );
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
    }
    let tmp = urls_file.with_extension("tmp");
    std::fs::write(&tmp, urls).unwrap();
    std::fs::rename(&tmp, &urls_file).unwrap();
    let _ = tokio::time::timeout(Duration::from_secs(seconds), done.notified()).await;
    println!("received {}", received.load(Ordering::SeqCst));
}
