# NixOS VM test: with allowReboot, a new system with another kernel is installed as the boot
# default and the host reboots into it.
#
# The machine boots through systemd-boot from its own disk, so what it boots after the reboot
# is the profile's default generation; the specialisation `new` has another kernel.
{ pkgs, self }:
let
  project = "test";
  jobset = "main";
  job = "machine";
  keyFile = "/var/lib/secrets/nixos-hydra-upgrade";
in
pkgs.testers.runNixOSTest {
  name = "nixos-hydra-upgrade-reboot";

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
      virtualisation.useBootLoader = true;
      virtualisation.useEFIBoot = true;
      boot.loader.systemd-boot.enable = true;
      boot.loader.efi.canTouchEfiVariables = true;
      specialisation.new.configuration = {
        environment.etc.marker.text = "new";
        boot.kernelPackages = pkgs.linuxPackages_latest;
      };
      system.autoUpgradeHydra.allowReboot = true;
      # After the reboot the agent starts by itself (its key is on the disk by then).
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
      builds."1" =
        builtins.unsafeDiscardStringContext "${nodes.machine.specialisation.new.configuration.system.build.toplevel
        }";
    };

  testScript =
    { nodes, ... }:
    ''
      ${builtins.readFile ./common/prelude.py}
      new = "${nodes.machine.specialisation.new.configuration.system.build.toplevel}"

      # A reboot of the guest restarts it instead of ending the VM.
      machine.start(allow_reboot=True)
      hydra.start()
      hydra.wait_for_unit("nginx.service")
      machine.wait_for_unit("multi-user.target")
      assert resolved("/run/booted-system/kernel") != resolved(f"{new}/kernel"), (
          "the specialisation must have another kernel for this test to mean anything"
      )
      start_agent("${keyFile}")

      with subtest("a kernel change installs the new system and reboots into it"):
          notify(1)
          machine.wait_for_console_text("reboot: Restarting system")
          machine.connected = False
          machine.wait_for_unit("multi-user.target")
          assert resolved("/run/booted-system") == new, "did not boot the new generation"
          assert resolved("/run/current-system") == new
          machine.succeed("grep -qx new /etc/marker")

      with subtest("the agent comes back and records the upgrade"):
          machine.wait_for_unit("nixos-hydra-upgrade.service")
          wait_status('.deployed.build == 1 and .phase == "idle"')
          machine.succeed(f"{status} | jq -e '.history | map(select(.build == 1)) | .[0].outcome == \"upgraded\"'")
    '';
}
