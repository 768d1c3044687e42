# NixOS VM test: a real Hydra (nixpkgs' services.hydra with hydra-host.nix) builds a jobset
# from a local path, and its RunCommand notifies the agent, which fetches the build from
# Hydra's binary cache and switches to it.
#
# A whole NixOS system cannot be built offline inside the Hydra VM, so the job is a tiny
# stand-in "system": a store path whose bin/switch-to-configuration records the switch and
# points /run/current-system at itself, which is all `nixos-rebuild switch --store-path` runs.
# hydra-host.nix runs `notify --spool` and the `retry` unit, so this needs a binary with both.
{ pkgs, self }:
let
  project = "test";
  jobset = "main";
  job = "machine";
  keyFile = "/var/lib/secrets/nixos-hydra-upgrade";
  hydraKey = "/run/keys/nixos-hydra-upgrade";
  inherit (pkgs.stdenv.hostPlatform) system;

  # The jobset's expression. It names bash and coreutils by store path (the Hydra node has
  # them; its builds run unsandboxed), because /bin/sh in the build sandbox has no mkdir.
  jobsetDir = pkgs.writeTextDir "release.nix" ''
    {
      ${job} = derivation {
        name = "nixos-system-${job}-from-hydra";
        system = "${system}";
        builder = "${pkgs.bash}/bin/bash";
        PATH = "${pkgs.coreutils}/bin";
        args = [
          "-c"
          '''
            mkdir -p $out/bin
            echo from-hydra > $out/nixos-version
            {
              echo '#!/bin/sh'
              echo 'set -e'
              echo 'echo from-hydra > /etc/marker-hydra'
              echo "/run/current-system/sw/bin/ln -sfn $out /run/current-system"
            } > $out/bin/switch-to-configuration
            chmod +x $out/bin/switch-to-configuration
          '''
        ];
      };
    }
  '';
in
pkgs.testers.runNixOSTest {
  name = "nixos-hydra-upgrade-real-hydra";

  nodes.hydra =
    { lib, ... }:
    {
      imports = [ self.nixosModules.hydra-host ];
      virtualisation.memorySize = 2048;
      virtualisation.writableStore = true;
      services.hydra = {
        enable = true;
        hydraURL = "http://hydra:3000";
        notificationSender = "hydra@localhost";
      };
      nix = {
        distributedBuilds = true;
        buildMachines = [
          {
            hostName = "localhost";
            systems = [ system ];
          }
        ];
        settings = {
          substituters = lib.mkForce [ ];
          sandbox = false;
        };
      };
      # Keeps the stand-in's builder in this node's store.
      system.extraDependencies = [
        pkgs.bash
        pkgs.coreutils
      ];
      services.nixos-hydra-upgrade-hydra = {
        enable = true;
        inherit project jobset;
        hosts.${job} = "http://machine:9980";
        keyFile = hydraKey;
      };
      networking.firewall.allowedTCPPorts = [ 3000 ];
      environment.systemPackages = [
        pkgs.curl
        pkgs.jq
      ];
    };

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
          instance = "http://hydra:3000";
        })
      ];
      # Hydra serves its store as a binary cache; this test's Hydra does not sign.
      nix.settings = {
        substituters = lib.mkForce [ "http://hydra:3000" ];
        require-sigs = false;
      };
    };

  testScript = ''
    ${builtins.readFile ./common/prelude.py}

    start_all()
    hydra.wait_for_unit("hydra-init.service")
    hydra.wait_for_unit("hydra-server.service")
    hydra.wait_for_open_port(3000)
    machine.wait_for_unit("multi-user.target")
    for node, path in ((machine, "${keyFile}"), (hydra, "${hydraKey}")):
        install_key(node, path)
    # hydra-notify and the retrier read the key through LoadCredential at start.
    hydra.succeed("systemctl restart nixos-hydra-upgrade-retry.service hydra-notify.service")
    hydra.wait_for_unit("nixos-hydra-upgrade-retry.service")
    machine.succeed("systemctl start nixos-hydra-upgrade.service")
    machine.wait_for_unit("nixos-hydra-upgrade.service")

    with subtest("the key reaches hydra-notify as a credential, not through a Hydra path"):
        hydra.succeed("test \"$(stat -c %U ${hydraKey})\" = root")
        pid = hydra.succeed("systemctl show -P MainPID hydra-notify.service").strip()
        hydra.succeed(f"tr '\\0' '\\n' < /proc/{pid}/environ | grep -qx 'CREDENTIALS_DIRECTORY=/run/credentials/hydra-notify.service'")
        hydra.succeed("runuser -u hydra-queue-runner -- test -w /var/lib/nixos-hydra-upgrade-spool")

    with subtest("Hydra builds the jobset from a local path"):
        hydra.succeed("mkdir -p /run/jobset && cp ${jobsetDir}/release.nix /run/jobset/ && chmod -R a+rX /run/jobset")
        hydra.succeed("hydra-create-user admin --role admin --password admin")
        api = "curl -sf -c /tmp/cookies -b /tmp/cookies -H 'Accept: application/json' -H 'Content-Type: application/json' -H 'Referer: http://localhost:3000/'"
        hydra.succeed(f"{api} -X POST -d '{{\"username\":\"admin\",\"password\":\"admin\"}}' http://localhost:3000/login")
        hydra.succeed(f"{api} -X PUT -d '{{\"displayname\":\"test\",\"enabled\":\"1\",\"visible\":\"1\"}}' http://localhost:3000/project/${project}")
        jobset_body = (
            '{"nixexprinput":"src","nixexprpath":"release.nix","enabled":"1","visible":"1",'
            '"checkinterval":"5","keepnr":1,"inputs":{"src":{"type":"path","value":"/run/jobset"}}}'
        )
        hydra.succeed(f"{api} -X PUT -d '{jobset_body}' http://localhost:3000/jobset/${project}/${jobset}")
        hydra.wait_until_succeeds(
            "curl -sf -H 'Accept: application/json' http://localhost:3000/build/1 | jq -e '.finished == 1 and .buildstatus == 0'",
            timeout=600,
        )

    with subtest("RunCommand notifies the agent, which deploys Hydra's build"):
        out = hydra.succeed("curl -sf -H 'Accept: application/json' http://localhost:3000/build/1 | jq -r .buildoutputs.out.path").strip()
        # The agent exits after a switch that replaced its unit; systemd starts it again.
        wait_status('.deployed.build == 1')
        machine.succeed("grep -qx from-hydra /etc/marker-hydra")
        assert resolved("/run/current-system") == out, "the host does not run Hydra's build"

    with subtest("the key is in no store path and not in Hydra's command log"):
        hydra.succeed(f"! grep -rqsF -- '{key}' /var/lib/hydra")
        hydra.succeed(f"! grep -rqsF -- '{key}' /nix/.rw-store")
  '';
}
