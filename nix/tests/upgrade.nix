# NixOS VM test: a notification from a fake Hydra upgrades a host, end to end.
#
# `hydra` serves the two JSON answers the agent asks for (static files and a 302) and sends the
# notifications; `machine` runs the agent, and its "new" system is the specialisation `new`,
# already in its store. Builds 1 and 2 both point at it.
{ pkgs, self }:
let
  project = "test";
  jobset = "main";
  job = "machine";
  keyFile = "/var/lib/secrets/nixos-hydra-upgrade";
in
pkgs.testers.runNixOSTest {
  name = "nixos-hydra-upgrade";

  nodes.machine =
    { lib, ... }:
    {
      imports = [ self.nixosModules.default ];

      environment.etc.marker.text = lib.mkDefault "old";
      specialisation.new.configuration = {
        environment.etc.marker.text = "new";
        # Changes the agent's own unit too: after the switch it must come back as the new one.
        system.autoUpgradeHydra.settings.log_format = "text";
      };

      system.autoUpgradeHydra = {
        enable = true;
        activation = "store-path";
        hydra = {
          instance = "http://hydra";
          inherit project jobset job;
        };
        healthChecks.canaryHosts = [ "hydra" ];
        dates = ""; # only notifications upgrade in this test
        listen = "0.0.0.0:9980";
        openFirewall = true;
        secretFile = keyFile;
      };
      # Started by the test script once the key exists.
      systemd.services.nixos-hydra-upgrade.wantedBy = lib.mkForce [ ];

      nix.settings.substituters = lib.mkForce [ ];
      environment.systemPackages = [
        pkgs.curl
        pkgs.jq
      ];
    };

  nodes.hydra =
    { nodes, ... }:
    let
      # A path string without its context, so this node's closure does not include it.
      newSystem = builtins.unsafeDiscardStringContext "${nodes.machine.specialisation.new.configuration.system.build.toplevel
      }";
      build = id: {
        inherit
          id
          project
          jobset
          job
          ;
        finished = 1;
        buildstatus = 0;
        system = pkgs.stdenv.hostPlatform.system;
        nixname = "nixos-system-machine";
        jobsetevals = [ id ];
        buildoutputs.out.path = newSystem;
      };
      json = name: value: pkgs.writeText name (builtins.toJSON value);
      fakeHydra = pkgs.linkFarm "fake-hydra" {
        "build/1" = json "build-1" (build 1);
        "build/2" = json "build-2" (build 2);
      };
      payload =
        id:
        json "payload-${toString id}.json" {
          event = "buildFinished";
          build = id;
          finished = true;
          buildStatus = 0;
          inherit project jobset job;
          system = pkgs.stdenv.hostPlatform.system;
          outputs = [
            {
              name = "out";
              path = newSystem;
            }
          ];
        };
    in
    {
      services.nginx = {
        enable = true;
        virtualHosts.hydra = {
          default = true;
          locations."/" = {
            root = fakeHydra;
            extraConfig = "default_type application/json;";
          };
          locations."= /job/${project}/${jobset}/${job}/latest".return = "302 http://hydra/build/2";
        };
      };
      networking.firewall.allowedTCPPorts = [ 80 ];
      environment.etc."payload-1.json".source = payload 1;
      environment.etc."payload-2.json".source = payload 2;
      environment.systemPackages = [
        self.packages.${pkgs.stdenv.hostPlatform.system}.default
        pkgs.curl
        pkgs.jq
        pkgs.openssl
      ];
    };

  testScript = ''
    import base64, os

    # Made at run time: the key is in no file of the test's closure.
    key = "whsec_" + base64.b64encode(os.urandom(32)).decode()
    status = "curl -sf http://127.0.0.1:9980/v1/status"

    start_all()
    hydra.wait_for_unit("nginx.service")
    machine.wait_for_unit("multi-user.target")
    for node, path in ((machine, "${keyFile}"), (hydra, "/root/hydra-upgrade.key")):
        node.succeed(f"mkdir -p $(dirname {path}) && (umask 077; echo '{key}' > {path})")

    machine.succeed("systemctl start nixos-hydra-upgrade.service")
    machine.wait_for_unit("nixos-hydra-upgrade.service")
    hydra.wait_until_succeeds("curl -sf http://machine:9980/healthz")

    with subtest("an unsigned notification is refused"):
        code = hydra.succeed(
            "curl -s -o /dev/null -w '%{http_code}' -H 'Content-Type: application/json' "
            "--data-binary @/etc/payload-2.json http://machine:9980/v1/upgrade"
        )
        assert code == "401", f"unsigned notification answered {code}"
        machine.succeed("grep -qx old /etc/marker")

    with subtest("a dead canary prevents the switch"):
        ignore = "sysctl -w net.ipv4.icmp_echo_ignore_all={0} net.ipv6.icmp.echo_ignore_all={0}"
        hydra.succeed(ignore.format(1))
        hydra.succeed(
            "nixos-hydra-upgrade notify --url http://machine:9980/v1/upgrade "
            "--secret-file /root/hydra-upgrade.key --hydra-json /etc/payload-1.json"
        )
        machine.wait_until_succeeds(
            f"{status} | jq -e '.last_attempt.build == 1 and .last_attempt.outcome == \"unhealthy\"'"
        )
        machine.succeed("grep -qx old /etc/marker")
        hydra.succeed(ignore.format(0))

    with subtest("a signed notification switches the machine"):
        # The POSIX fallback sender this time, so both senders meet the real agent.
        hydra.succeed(
            "HYDRA_JSON=/etc/payload-2.json "
            "sh ${../../hydra-plugin-config/notify.sh} /root/hydra-upgrade.key http://machine:9980"
        )
        machine.wait_until_succeeds("grep -qx new /etc/marker")

    with subtest("the agent is still running after its own switch"):
        machine.wait_until_succeeds(f"{status} | jq -e '.deployed.build == 2 and .phase == \"idle\"'")
        machine.succeed("systemctl is-active nixos-hydra-upgrade.service")
        machine.succeed("test \"$(readlink -f /run/current-system)\" != \"$(readlink -f /run/booted-system)\"")

    with subtest("the key is in no store path"):
        # what the module put in the store (unit, config, package), and all that was added since
        unit = "$(dirname $(readlink -f /etc/systemd/system/nixos-hydra-upgrade.service))"
        machine.succeed(f"! nix-store -qR {unit} | xargs grep -rlqsF -- '{key}'")
        machine.succeed(f"! grep -rqsF -- '{key}' /nix/.rw-store")
  '';
}
