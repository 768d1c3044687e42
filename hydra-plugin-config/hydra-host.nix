# NixOS module for the Hydra host: tells Hydra to notify each host's agent, hands the key to
# hydra-notify through systemd credentials, and runs the retrier that delivers what a host did
# not take at once. docs/hydra.md explains each piece.
#
# Import it into the Hydra host's configuration and set the options; with the flake:
#   imports = [ inputs.nixos-hydra-upgrade.nixosModules.hydra-host ];
#   services.nixos-hydra-upgrade-hydra = { enable = true; project = "nix-config"; jobset = "main";
#     hosts."nixosConfigurations.web1" = "http://web1.example.com:9980";
#     keyFile = "/run/agenix/nixos-hydra-upgrade"; };
# Without the flake: `imports = [ (import ./hydra-plugin-config/hydra-host.nix { }) ]`, which
# builds the package from ../package.nix with the host's pkgs.
{
  self ? null,
}:
{
  config,
  lib,
  pkgs,
  ...
}:
let
  cfg = config.services.nixos-hydra-upgrade-hydra;
  opt = "services.nixos-hydra-upgrade-hydra";

  # The name of the key among the credentials of hydra-notify and of the retrier.
  credential = "nixos-hydra-upgrade-key";
  # StateDirectory= of the retrier: systemd creates /var/lib/<this> owned by its User=.
  spoolName = "nixos-hydra-upgrade-spool";
  spoolDir = "/var/lib/${spoolName}";

  # The shell fallback sender with everything it runs on its PATH (hydra-notify's PATH has
  # only zstd).
  notifySh = pkgs.writeShellApplication {
    name = "nixos-hydra-upgrade-notify-sh";
    runtimeInputs = [
      pkgs.jq
      pkgs.openssl
      pkgs.curl
      pkgs.coreutils
    ];
    text = builtins.readFile ./notify.sh;
  };

  exe = lib.getExe cfg.package;
  # Job names and URLs go unquoted into hydra.conf and /bin/sh; an assertion keeps them plain.
  routes = lib.mapAttrsToList (job: url: "--route ${job}=${url}") cfg.hosts;
  # Expanded by the /bin/sh that RunCommand starts inside hydra-notify, which inherits
  # hydra-notify's CREDENTIALS_DIRECTORY: the command names the key's place, never the key.
  # (Hydra reads hydra.conf with Config::General without variable interpolation, so the `$`
  # reaches the shell; the directory, /run/credentials/hydra-notify.service, has no spaces.)
  keyInNotify = "$CREDENTIALS_DIRECTORY/${credential}";
  block = job: command: ''
    <runcommand>
      job = ${cfg.project}:${cfg.jobset}:${job}
      command = ${command}
    </runcommand>
  '';
  # One block for the jobset, `--route` sending each build only to its own job's agent; the
  # shell sender has no routes, so it gets one block per job.
  runcommands =
    if cfg.shellSender then
      lib.concatStrings (
        lib.mapAttrsToList (job: url: block job "${lib.getExe notifySh} ${keyInNotify} ${url}") cfg.hosts
      )
    else
      block "*" "${exe} notify --secret-file ${keyInNotify} --spool ${spoolDir} ${toString routes}";
  plain = s: builtins.match "[A-Za-z0-9_.:/@*+=-]+" s != null;
in
{
  options.services.nixos-hydra-upgrade-hydra = {
    enable = lib.mkEnableOption "notifications from this Hydra to nixos-hydra-upgrade agents";

    package = lib.mkOption {
      type = lib.types.package;
      default =
        if self != null then
          self.packages.${pkgs.stdenv.hostPlatform.system}.default
        else
          pkgs.callPackage ../package.nix { };
      defaultText = lib.literalExpression "nixos-hydra-upgrade.packages.\${system}.default";
      description = "The nixos-hydra-upgrade package whose `notify` and `retry` run here.";
    };

    project = lib.mkOption {
      type = lib.types.str;
      example = "nix-config";
      description = "The Hydra project that builds the hosts.";
    };

    jobset = lib.mkOption {
      type = lib.types.str;
      example = "main";
      description = "The jobset of the project that builds the hosts.";
    };

    hosts = lib.mkOption {
      type = lib.types.attrsOf lib.types.str;
      example = {
        "nixosConfigurations.web1" = "http://web1.example.com:9980";
      };
      description = ''
        Hydra job (its full attribute path) → base URL of the agent of the host that job
        builds. Each finished build is sent only to its own job's agent.
      '';
    };

    keyFile = lib.mkOption {
      type = lib.types.str;
      example = "/run/agenix/nixos-hydra-upgrade";
      description = ''
        The key file (`whsec_…` lines, the same as the hosts' `secretFile`), readable by root
        only, outside the Nix store and outside /var/lib/hydra. systemd's `LoadCredential`
        hands a copy to hydra-notify and to the retrier; no Hydra user reads this path. While
        it is missing, systemd does not start hydra-notify (so no Hydra notification at all
        goes out): install it during activation (agenix, sops-nix) or before enabling this.
      '';
    };

    shellSender = lib.mkOption {
      type = lib.types.bool;
      default = false;
      description = ''
        Send with the shell fallback (notify.sh: jq, openssl, curl) instead of the binary.
        It has no retrier: a host that is down when its build finishes waits for its poll.
      '';
    };
  };

  config = lib.mkIf cfg.enable {
    assertions = [
      {
        assertion = lib.hasPrefix "/" cfg.keyFile && !lib.hasPrefix "${builtins.storeDir}/" cfg.keyFile;
        message = ''
          ${opt}.keyFile = "${cfg.keyFile}" must be an absolute path outside the Nix store
          (which every user can read), e.g. "/run/agenix/nixos-hydra-upgrade".
        '';
      }
      {
        assertion = !lib.hasPrefix "/var/lib/hydra/" cfg.keyFile;
        message = ''
          ${opt}.keyFile = "${cfg.keyFile}" is under /var/lib/hydra, which belongs to the hydra
          user: anyone who can act as hydra could replace it. Keep it root-owned elsewhere,
          e.g. "/run/agenix/nixos-hydra-upgrade"; LoadCredential hands hydra-notify a copy.
        '';
      }
      {
        assertion = cfg.hosts != { } && lib.all plain (lib.attrNames cfg.hosts ++ lib.attrValues cfg.hosts);
        message = ''
          ${opt}.hosts must name at least one job = URL, each free of spaces, quotes and
          shell syntax: they are written unquoted into hydra.conf and a /bin/sh command line.
        '';
      }
      {
        assertion = plain cfg.project && plain cfg.jobset;
        message = ''
          ${opt}.project and .jobset must be plain Hydra names (letters, digits, - _ .).
        '';
      }
    ];

    environment.systemPackages = [ cfg.package ] ++ lib.optional cfg.shellSender notifySh;

    # Hydra shows command lines and output in its web UI: the key is only named by its file.
    services.hydra.extraConfig = runcommands;

    # hydra-notify (user hydra-queue-runner in nixpkgs' and Hydra's own module) gets a copy of
    # the key in its credentials directory; RunCommand's /bin/sh inherits CREDENTIALS_DIRECTORY.
    # It starts after the retrier, whose StateDirectory is the spool `notify --spool` writes.
    systemd.services.hydra-notify = {
      serviceConfig.LoadCredential = [ "${credential}:${cfg.keyFile}" ];
      wants = lib.optional (!cfg.shellSender) "nixos-hydra-upgrade-retry.service";
      after = lib.optional (!cfg.shellSender) "nixos-hydra-upgrade-retry.service";
    };

    # Delivers what `notify` handed to the spool (an agent that was down or slow) with backoff,
    # same webhook-id, fresh signature, until delivered or the notification's deadline.
    systemd.services.nixos-hydra-upgrade-retry = lib.mkIf (!cfg.shellSender) {
      description = "Retry nixos-hydra-upgrade notifications an agent did not take at once";
      wantedBy = [ "multi-user.target" ];
      wants = [ "network-online.target" ];
      after = [ "network-online.target" ];
      serviceConfig = {
        ExecStart = "${exe} retry --spool ${spoolDir} --secret-file %d/${credential}";
        LoadCredential = [ "${credential}:${cfg.keyFile}" ];
        # The same user as hydra-notify, so `notify` can write the spool and the retrier own it;
        # systemd creates it (no tmpfiles rule, no path under a hydra-owned directory).
        User = "hydra-queue-runner";
        Group = "hydra";
        StateDirectory = spoolName;
        StateDirectoryMode = "0700";
        UMask = "0077";
        Restart = "always";
        RestartSec = "10s";
        NoNewPrivileges = true;
        PrivateTmp = true;
        ProtectSystem = "strict";
        ProtectHome = true;
        ProtectKernelTunables = true;
        ProtectControlGroups = true;
        RestrictSUIDSGID = true;
        LockPersonality = true;
      };
    };
  };
}
