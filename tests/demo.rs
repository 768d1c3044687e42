//! `demo` runs the whole flow on any machine and says what happened at each stage.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[test]
fn demo_shows_the_whole_flow() {
    let started = std::time::Instant::now();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_nixos-hydra-upgrade"))
        .arg("demo")
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    for expected in [
        "nothing to do: build 4822 has buildStatus 1",
        "202 queued build 4830",
        "pre-check \"hydra reachable\": passed true",
        "stand-in nixos-rebuild switch",
        "nixos-rebuild switch --store-path /nix/store/",
        "200 current build 4830",
        "401 ",
        "deployed path matches Hydra's out path: true",
    ] {
        assert!(out.contains(expected), "missing {expected:?} in:\n{out}");
    }
    assert!(
        started.elapsed().as_secs() < 30,
        "took {:?}",
        started.elapsed()
    );
}
