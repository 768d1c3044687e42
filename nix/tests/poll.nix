# NixOS VM test: without a key the agent accepts no notification and upgrades from its
# scheduled poll of `/job/…/latest`.
{ pkgs, self }:
let
  project = "test";
  jobset = "main";
  job = "machine";
in
pkgs.testers.runNixOSTest {
  name = "nixos-hydra-upgrade-poll";

  nodes.machine =
    { lib, ... }:
    {
      imports = [
        (import ./common/agent.nix {
          inherit
            self
            project
            jobset
            job
            ;
          keyFile = null;
        })
      ];
      specialisation.new.configuration.environment.etc.marker.text = "new";
      system.autoUpgradeHydra = {
        dates = lib.mkForce "*:*:0/10"; # every 10 seconds
        persistent = false;
      };
      systemd.services.nixos-hydra-upgrade.wantedBy = lib.mkForce [ "multi-user.target" ];
    };

  nodes.hydra =
    { nodes, ... }:
    import ./common/fake-hydra.nix {
      inherit
        pkgs
        self
        project
        jobset
        job
        ;
      builds."3" =
        builtins.unsafeDiscardStringContext "${nodes.machine.specialisation.new.configuration.system.build.toplevel
        }";
    };

  testScript = ''
    ${builtins.readFile ./common/prelude.py}

    start_all()
    hydra.wait_for_unit("nginx.service")
    machine.wait_for_unit("nixos-hydra-upgrade.service")

    with subtest("the agent announces its next poll and refuses pushes"):
        wait_status(".next_poll != null")
        code = machine.succeed(
            "curl -s -o /dev/null -w '%{http_code}' -X POST -d '{}' http://127.0.0.1:9980/v1/upgrade"
        )
        assert code == "401", f"a push without a key answered {code}"

    with subtest("the scheduled poll finds the newest build and switches"):
        wait_status('.last_attempt.build == 3 and .last_attempt.source == "schedule" and .last_attempt.outcome == "upgraded"')
        machine.succeed("grep -qx new /etc/marker")
  '';
}
