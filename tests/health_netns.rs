//! Failing ICMP and TCP targets on a real network: two network namespaces made by each test.
//!
//! Needs root and `ip` (iproute2); without them these tests FAIL, they do not skip.
//!
//! Topology, per test (`nhu-<pid>-<n>-p` and `-s`; nothing is added to the root namespace):
//!
//! ```text
//!   prober namespace (-p)                      silent namespace (-s)
//!   lo up: 127.0.0.0/8, ::1 answer echo        lo up
//!   nhu0 169.254.77.1/30  <----- veth ----->   nhu1 169.254.77.2/30
//!        fd6e:6875::1/64                            fd6e:6875::2/64
//!                                              icmp echo ignored (v4 and v6), no listeners
//! ```
//!
//! Why two namespaces: the prober side must reach an address that stays silent, and a veth end in
//! the root namespace would need an address there. Here the veth lives only between the two
//! namespaces, neither has a default route or any other link, so no packet can leave; the
//! addresses (IPv4 link-local, an IPv6 ULA) exist only on that veth. The probes run on threads
//! that joined the prober namespace with setns(2) — the runtime's blocking threads too — so every
//! socket the module opens, and every process it starts, lives there.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::fs::File;
use std::future::Future;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use nix::sched::{CloneFlags, setns};
use nixos_hydra_upgrade::health::{Check, CheckKind, HealthChecksConfig, run_phase};
use nixos_hydra_upgrade::model::CheckResult;

const SILENT_V4: &str = "169.254.77.2";
const SILENT_V6: &str = "fd6e:6875::2";

/// The namespace pair of one test; deleted on drop, also when the test fails.
struct Netns {
    prober: String,
    silent: String,
}

impl Netns {
    fn new() -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let base = format!(
            "nhu-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        );
        let ns = Netns {
            prober: format!("{base}-p"),
            silent: format!("{base}-s"),
        };
        let (p, s) = (ns.prober.as_str(), ns.silent.as_str());
        ip(&["netns", "add", p]);
        ip(&["netns", "add", s]);
        ip(&["-n", p, "link", "set", "lo", "up"]);
        ip(&["-n", s, "link", "set", "lo", "up"]);
        ip(&[
            "-n", p, "link", "add", "nhu0", "type", "veth", "peer", "name", "nhu1", "netns", s,
        ]);
        ip(&["-n", p, "addr", "add", "169.254.77.1/30", "dev", "nhu0"]);
        ip(&["-n", s, "addr", "add", "169.254.77.2/30", "dev", "nhu1"]);
        ip(&[
            "-n",
            p,
            "addr",
            "add",
            "fd6e:6875::1/64",
            "dev",
            "nhu0",
            "nodad",
        ]);
        ip(&[
            "-n",
            s,
            "addr",
            "add",
            "fd6e:6875::2/64",
            "dev",
            "nhu1",
            "nodad",
        ]);
        ip(&["-n", p, "link", "set", "nhu0", "up"]);
        ip(&["-n", s, "link", "set", "nhu1", "up"]);
        ns.wait_until_links_are_ready();
        ns
    }

    /// Both veth ends up with carrier and no tentative IPv6 address (the link-local one goes
    /// through duplicate address detection): otherwise the first neighbour solicitation can be
    /// lost and a probe waits a second for the retransmission. Bounded: at most 5 s.
    fn wait_until_links_are_ready(&self) {
        for _ in 0..250 {
            let ready = [(&self.prober, "nhu0"), (&self.silent, "nhu1")]
                .iter()
                .all(|(ns, dev)| {
                    let link = ip_out(&["-n", ns, "link", "show", "dev", dev]);
                    let tentative =
                        ip_out(&["-n", ns, "-6", "addr", "show", "dev", dev, "tentative"]);
                    link.contains("LOWER_UP") && tentative.trim().is_empty()
                });
            if ready {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "veth between {} and {} did not come up",
            self.prober, self.silent
        );
    }

    /// Makes the silent side ignore ICMP echo requests, v4 and v6.
    fn silence(&self) {
        for key in [
            "net.ipv4.icmp_echo_ignore_all=1",
            "net.ipv6.icmp.echo_ignore_all=1",
        ] {
            ip(&["netns", "exec", &self.silent, "sysctl", "-q", "-w", key]);
        }
    }

    /// Runs `make()`'s future to completion on a thread inside the prober namespace.
    fn run_in_prober<F, Fut, T>(&self, make: F) -> T
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = T>,
        T: Send + 'static,
    {
        let path = format!("/run/netns/{}", self.prober);
        let thread = std::thread::spawn(move || {
            join_netns(&path);
            let hook_path = path.clone();
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                // Blocking-pool threads (DNS, files) must not probe from the root namespace.
                .on_thread_start(move || join_netns(&hook_path))
                .build()
                .unwrap();
            // Proof we are inside: this address exists only in the prober namespace.
            std::net::UdpSocket::bind("169.254.77.1:0").expect("not inside the prober namespace");
            runtime.block_on(make())
        });
        match thread.join() {
            Ok(value) => value,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for ns in [&self.prober, &self.silent] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
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

fn ip(args: &[&str]) {
    ip_out(args);
}

fn ip_out(args: &[&str]) -> String {
    let out = Command::new("ip")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("these tests need `ip` (iproute2) and root: {e}"));
    assert!(
        out.status.success(),
        "`ip {}` failed ({}): {} — these tests need root and network namespaces",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn check(kind: CheckKind, timeout_ms: u64, retries: u32) -> Check {
    Check {
        name: kind.target(),
        kind,
        timeout: Duration::from_millis(timeout_ms),
        retries,
        interval: Duration::from_millis(100),
    }
}

fn icmp(host: &str, timeout_ms: u64, retries: u32) -> Check {
    check(CheckKind::Icmp { host: host.into() }, timeout_ms, retries)
}

fn tcp(address: &str, timeout_ms: u64) -> Check {
    check(
        CheckKind::Tcp {
            address: address.into(),
        },
        timeout_ms,
        0,
    )
}

fn phase(ns: &Netns, checks: Vec<Check>) -> (Vec<CheckResult>, Duration) {
    ns.run_in_prober(move || async move {
        let started = Instant::now();
        let results = run_phase(&checks, Duration::from_secs(20)).await;
        (results, started.elapsed())
    })
}

#[test]
fn a_silent_icmp_target_fails_after_its_timeout() {
    let ns = Netns::new();
    // Control: before silencing, the same targets answer (so the failure below is the silence,
    // not a broken path). Retries cover the veth coming up.
    let (before, _) = phase(
        &ns,
        vec![icmp(SILENT_V4, 1000, 3), icmp(SILENT_V6, 1000, 3)],
    );
    assert!(
        before.iter().all(|r| r.passed),
        "control failed: {before:#?}"
    );

    ns.silence();
    let (after, elapsed) = phase(
        &ns,
        vec![
            icmp(SILENT_V4, 1000, 0),
            icmp(SILENT_V6, 1000, 0),
            // Still reachable: its TCP stack answers with a reset.
            tcp("169.254.77.2:9", 1000),
        ],
    );
    println!("silent targets: {after:#?}\nphase took {elapsed:?}");
    for r in &after[..2] {
        assert!(!r.passed, "{r:?}");
        assert!(r.detail.starts_with("no echo reply from "), "{r:?}");
        assert_eq!(r.attempts, 1);
        assert!((1000..1800).contains(&r.duration_ms), "{r:?}");
    }
    assert_eq!(after[2].detail, "connection refused");
}

#[test]
fn a_refused_tcp_port_fails_fast() {
    let ns = Netns::new();
    let (results, elapsed) = phase(
        &ns,
        vec![
            tcp("169.254.77.2:7", 5000),
            tcp("[fd6e:6875::2]:7", 5000),
            check(
                CheckKind::Tcp {
                    address: "169.254.77.2:7".into(),
                },
                5000,
                2,
            ),
        ],
    );
    println!("refused: {results:#?}\nphase took {elapsed:?}");
    for r in &results {
        assert!(!r.passed, "{r:?}");
        assert_eq!(r.detail, "connection refused");
    }
    assert_eq!(results[2].attempts, 3);
    // Nowhere near the 5 s timeout: a refusal is an answer.
    assert!(
        results[0].duration_ms < 1000 && results[1].duration_ms < 1000,
        "{results:?}"
    );
    assert!(elapsed < Duration::from_secs(2), "{elapsed:?}");
}

#[test]
fn canaries_fan_out_so_a_phase_takes_one_timeout_not_the_sum() {
    let ns = Netns::new();
    ns.silence();
    let timeout = Duration::from_secs(1);
    let run = |silent: &[&str]| {
        // The `canary_hosts` shorthand: 64 answering loopback addresses of the prober
        // namespace, then the silent ones; retries 0 so each silent canary costs one timeout.
        let config = HealthChecksConfig {
            canary_hosts: (1..=64)
                .map(|i| format!("127.0.0.{i}"))
                .chain(silent.iter().map(|s| s.to_string()))
                .collect(),
            timeout,
            ..HealthChecksConfig::default()
        };
        config.validate().unwrap();
        let mut checks = config.pre_checks();
        for c in &mut checks {
            c.retries = 0;
        }
        let (results, elapsed) = phase(&ns, checks);
        let passed = results[..64].iter().filter(|r| r.passed).count();
        assert_eq!(passed, 64, "{results:#?}");
        for r in &results[64..] {
            assert!(!r.passed && r.detail.starts_with("no echo reply"), "{r:?}");
        }
        // Every silent canary waited its full timeout...
        assert!(elapsed >= timeout, "{elapsed:?}");
        elapsed
    };

    let one = run(&[SILENT_V4]);
    println!("64 answering + 1 silent canary, timeout 1s: phase took {one:?}");
    assert!(one < timeout.mul_f64(1.5), "{one:?}: not about one timeout");

    // ...and with two silent canaries one after the other would need >= 2 s; concurrently the
    // phase still takes about one timeout. This bound cannot be met by a sequential run.
    let two = run(&[SILENT_V4, SILENT_V6]);
    println!("64 answering + 2 silent canaries, timeout 1s: phase took {two:?}");
    assert!(
        two < Duration::from_millis(1800),
        "{two:?}: checks did not run concurrently"
    );
}
