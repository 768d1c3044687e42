# NixOS VM test: a post-check that fails after the switch rolls the host back.
#
# `app.service` runs in the old system; in the new one (the specialisation `new`) it is a
# oneshot that exits at once, so the switch succeeds but the post-check, which requires it
# active, fails and the agent switches back to the system it came from.
{ pkgs, self }:
let
  project = "test";
  jobset = "main";
  job = "machine";
  keyFile = "/var/lib/secrets/nixos-hydra-upgrade";
in
pkgs.testers.runNixOSTest {
  name = "nixos-hydra-upgrade-rollback";

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
            keyFile
            ;
        })
      ];
      systemd.services.app = {
        wantedBy = [ "multi-user.target" ];
        serviceConfig.ExecStart = lib.mkDefault "${pkgs.coreutils}/bin/sleep infinity";
      };
      specialisation.new.configuration = {
        environment.etc.marker.text = "new";
        systemd.services.app.serviceConfig = {
          Type = "oneshot";
          ExecStart = "${pkgs.coreutils}/bin/true";
        };
      };
      system.autoUpgradeHydra.settings.health_checks = {
        settle = "2s";
        post = [
          {
            kind = "systemd";
            units = [ "app.service" ];
            retries = 3;
            interval = "2s";
          }
        ];
      };
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
      builds."1" =
        builtins.unsafeDiscardStringContext "${nodes.machine.specialisation.new.configuration.system.build.toplevel
        }";
    };

  testScript = ''
    ${builtins.readFile ./common/prelude.py}

    start_all()
    hydra.wait_for_unit("nginx.service")
    machine.wait_for_unit("app.service")
    start_agent("${keyFile}")
    original = resolved("/run/current-system")

    with subtest("a failing post-check rolls back to the system that ran before"):
        notify(1)
        wait_status('.last_attempt.build == 1 and .last_attempt.outcome == "rolled-back"')
        machine.succeed("grep -qx old /etc/marker")
        assert resolved("/run/current-system") == original, "not back on the original system"
        assert resolved("/nix/var/nix/profiles/system") == original, "the boot default is not the original"
        machine.wait_for_unit("app.service")

    with subtest("the rolled-back build is not the deployed one"):
        machine.succeed(f"{status} | jq -e '.deployed == null or .deployed.build != 1'")
        machine.succeed("systemctl is-active nixos-hydra-upgrade.service")
  '';
}
