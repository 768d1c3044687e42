# NixOS VM test: `operation = "boot"` makes the new system the boot default without activating
# it; the next boot starts it.
{ pkgs, self }:
let
  project = "test";
  jobset = "main";
  job = "machine";
  keyFile = "/var/lib/secrets/nixos-hydra-upgrade";
in
pkgs.testers.runNixOSTest {
  name = "nixos-hydra-upgrade-boot";

  nodes.machine = {
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
    virtualisation.useBootLoader = true;
    virtualisation.useEFIBoot = true;
    boot.loader.systemd-boot.enable = true;
    boot.loader.efi.canTouchEfiVariables = true;
    specialisation.new.configuration.environment.etc.marker.text = "new";
    system.autoUpgradeHydra.operation = "boot";
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

  testScript =
    { nodes, ... }:
    ''
      ${builtins.readFile ./common/prelude.py}
      new = "${nodes.machine.specialisation.new.configuration.system.build.toplevel}"

      start_all()
      hydra.wait_for_unit("nginx.service")
      machine.wait_for_unit("multi-user.target")
      start_agent("${keyFile}")
      original = resolved("/run/current-system")

      with subtest("boot installs the new system as the boot default only"):
          notify(1)
          wait_status('.last_attempt.build == 1 and .last_attempt.outcome == "upgraded"')
          assert resolved("/nix/var/nix/profiles/system") == new, "not the boot default"
          assert resolved("/run/current-system") == original, "boot must not activate"
          machine.succeed("grep -qx old /etc/marker")

      with subtest("the next boot runs it"):
          machine.shutdown()
          machine.start()
          machine.wait_for_unit("multi-user.target")
          assert resolved("/run/booted-system") == new
          machine.succeed("grep -qx new /etc/marker")
    '';
}
