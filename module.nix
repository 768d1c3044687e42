# NixOS module: runs the nixos-hydra-upgrade agent as a systemd service.
#
# The flake imports this file with `lib.modules.importApply ./module.nix { inherit self; }`, so
# `package` defaults to the flake's own build. Without a flake, import it as
# `(import ./module.nix { })`; the package is then built from ./package.nix with the host's pkgs.
#
# Layout rule (tests/nix_module_options.rs relies on it): every option is declared directly in
# `options.system.autoUpgradeHydra`, one `<path> = lib.mk…Option` per declaration, nested names
# written with dots (`hydra.instance = lib.mkOption {`). docs/nixos.md has the option table.
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
  cfg = config.system.autoUpgradeHydra;
  opt = "system.autoUpgradeHydra";

  settingsFormat = pkgs.formats.toml { };

  # Where systemd puts the secret (LoadCredential); the TOML names this file, never the source.
  credentialPath = "/run/credentials/nixos-hydra-upgrade.service/secret";
  stateDir = "/var/lib/nixos-hydra-upgrade";

  # `listen` is "host:port" (IPv6 as "[::]:9980") or "unix:/path".
  listenIsUnix = lib.hasPrefix "unix:" cfg.listen;
  listenMatch = builtins.match "(.+):([0-9]{1,5})" cfg.listen;
  listenHost = if listenMatch == null then null else builtins.elemAt listenMatch 0;
  listenPort = if listenMatch == null then null else lib.toIntBase10 (builtins.elemAt listenMatch 1);
  isLoopback =
    host:
    builtins.elem host [
      "localhost"
      "[::1]"
      "::1"
    ]
    || lib.hasPrefix "127." host;

  instanceMatch = builtins.match "(https?)://([^/:]+|\\[[^]]+])(:[0-9]+)?(/.*)?" cfg.hydra.instance;
  instanceIsPlainRemoteHttp =
    instanceMatch != null
    && builtins.elemAt instanceMatch 0 == "http"
    && !isLoopback (builtins.elemAt instanceMatch 1);

  validTime = t: builtins.match "([01][0-9]|2[0-3]):[0-5][0-9]" t != null;

  # Flags refused in `flags`, each with why (src/refused_flags.rs and docs/nixos.md list the
  # same names and reasons; tests/nix_module_options.rs compares the three).
  refusedFlags = {
    "--flake" = "the agent passes the target itself (the flake of Hydra's evaluation)";
    "-F" = "the agent passes the target itself (the flake of Hydra's evaluation)";
    "--store-path" = "the agent passes the target itself (the store path Hydra built)";
    "--no-flake" = "makes nixos-rebuild build /etc/nixos/configuration.nix instead of Hydra's build";
    "--file" = "builds the system from another Nix file instead of deploying Hydra's build";
    "-f" = "builds the system from another Nix file instead of deploying Hydra's build";
    "--attr" = "builds another attribute instead of deploying Hydra's build";
    "-A" = "builds another attribute instead of deploying Hydra's build";
    "--include" =
      "changes the search path the configuration is evaluated with, so another system is built";
    "-I" = "changes the search path the configuration is evaluated with, so another system is built";
    "--override-input" = "replaces a flake input, so the result is not the system Hydra built";
    "--update-input" = "updates a flake input, so the result is not the system Hydra built";
    "--recreate-lock-file" = "re-locks every flake input, so the result is not the system Hydra built";
    "--commit-lock-file" = "writes the flake's lock file; the agent deploys, it never edits the flake";
    "--impure" =
      "lets the host's environment change the evaluation, so the result may differ from Hydra's build";
    "--upgrade" = "updates root's channels and evaluates against them instead of Hydra's build";
    "--upgrade-all" =
      "updates all of root's channels and evaluates against them instead of Hydra's build";
    "--rollback" = "activates the previous generation instead of Hydra's build";
    "--profile-name" =
      "installs into another profile, so the reboot decision and rollback read the wrong one (system.system_profile)";
    "-p" =
      "installs into another profile, so the reboot decision and rollback read the wrong one (system.system_profile)";
    "--specialisation" =
      "activates a specialisation, so the running system never equals the target and post-checks roll back";
    "-c" =
      "activates a specialisation, so the running system never equals the target and post-checks roll back";
    "--target-host" = "deploys to another machine; the agent upgrades the host it runs on";
    "--build-host" = "builds on another machine; the agent deploys what Hydra built, it does not build";
  };
  # The refused flag an argument spells, as argparse reads it: `--long`, `--long=value`, `-x`,
  # `-xvalue`, or `x` after leading value-less short flags (`-Lp`); null for any other.
  valuelessShort = lib.stringToCharacters "vkKLQsSh";
  refusedName =
    arg:
    let
      name =
        if lib.hasPrefix "--" arg then
          builtins.head (lib.splitString "=" arg)
        else if lib.hasPrefix "-" arg then
          let
            first = lib.findFirst (c: !builtins.elem c valuelessShort) null (
              lib.stringToCharacters (lib.removePrefix "-" arg)
            );
          in
          if first == null then null else "-${first}"
        else
          null;
    in
    if name != null && refusedFlags ? ${name} then name else null;
  flagAssertions = map (flag: {
    assertion = false;
    message = ''
      ${opt}.flags contains "${flag}", which is refused: ${refusedFlags.${refusedName flag}}.
      Remove it (the agent deploys exactly the build Hydra verified; to change flake inputs,
      let Hydra build the updated lock file).
    '';
  }) (lib.filter (flag: refusedName flag != null) cfg.flags);

  # Keys of the agent's TOML that options of this module set; `settings` may not set them too.
  ownedKeys = [
    [ "host" ]
    [ "operation" ]
    [ "activation" ]
    [ "flags" ]
    [ "allow_reboot" ]
    [ "reboot_window" ]
    [ "dates" ]
    [ "randomized_delay" ]
    [ "persistent" ]
    [ "listen" ]
    [ "secret_file" ]
    [ "state_dir" ]
    [
      "hydra"
      "instance"
    ]
    [
      "hydra"
      "project"
    ]
    [
      "hydra"
      "jobset"
    ]
    [
      "hydra"
      "job"
    ]
    [
      "health_checks"
      "canary_hosts"
    ]
    # issue 14 (safety)
    [ "activation_window" ]
    [ "gates" ]
    [
      "gc"
      "keep_generations"
    ]
  ];
  clashingKeys = lib.filter (path: lib.hasAttrByPath path cfg.settings) ownedKeys;

  experimentalFeatures =
    let
      value = config.nix.settings.experimental-features or [ ];
    in
    if builtins.isList value then value else lib.splitString " " value;
  flakesEnabled =
    builtins.all (f: builtins.elem f experimentalFeatures) [
      "nix-command"
      "flakes"
    ]
    || lib.hasInfix "flakes" (config.nix.extraOptions or "");

  # SPEC §3 keys, snake_case; only non-null values are rendered.
  generatedSettings = {
    inherit (cfg)
      host
      operation
      activation
      flags
      dates
      persistent
      listen
      ;
    allow_reboot = cfg.allowReboot;
    randomized_delay = cfg.randomizedDelaySec;
    state_dir = stateDir;
    hydra = {
      inherit (cfg.hydra)
        instance
        project
        jobset
        job
        ;
    };
    health_checks.canary_hosts = cfg.healthChecks.canaryHosts;
  }
  // lib.optionalAttrs (cfg.rebootWindow != null) {
    reboot_window = {
      inherit (cfg.rebootWindow) lower upper;
    };
  }
  // lib.optionalAttrs (cfg.secretFile != null) { secret_file = credentialPath; }
  // safetySettings
  # Fleet rollouts (issue 15): the push stagger, and [rollout] when it names agents.
  // {
    push_delay = cfg.pushDelay;
  }
  // lib.optionalAttrs (cfg.rollout.after != [ ]) {
    rollout = {
      inherit (cfg.rollout) after bake timeout;
    };
  };

  # issue 14 (safety): activation window, gates and clean-up, as SPEC §3 keys.
  safetySettings =
    lib.optionalAttrs (cfg.activationWindow != null) {
      activation_window = {
        inherit (cfg.activationWindow) lower upper;
      };
    }
    // lib.optionalAttrs (cfg.gates != [ ]) {
      gates = map (
        gate:
        {
          inherit (gate) kind recheck;
        }
        // lib.optionalAttrs (gate.argv != [ ]) { inherit (gate) argv; }
      ) cfg.gates;
    }
    // lib.optionalAttrs (builtins.any (gate: gate.kind == "not-metered") cfg.gates) {
      system.nmcli = lib.getExe' pkgs.networkmanager "nmcli";
    }
    // lib.optionalAttrs (cfg.gc.keepGenerations != null) {
      gc.keep_generations = cfg.gc.keepGenerations;
    };

  uncheckedConfig = settingsFormat.generate "nixos-hydra-upgrade-unchecked.toml" (
    lib.recursiveUpdate generatedSettings cfg.settings
  );

  # Validated at build time: a typo in `settings` fails `nixos-rebuild build`, not the agent.
  # Skipped when cross-compiling, where the build machine cannot run the host's binary.
  canRunPackage = pkgs.stdenv.buildPlatform.canExecute pkgs.stdenv.hostPlatform;
  configFile =
    pkgs.runCommand "nixos-hydra-upgrade.toml"
      {
        preferLocalBuild = true;
      }
      ''
        cp ${uncheckedConfig} "$out"
        ${lib.optionalString canRunPackage ''
          ${lib.getExe cfg.package} check-config --skip-programs --config "$out"
        ''}
      '';
in
{
  options.system.autoUpgradeHydra = {
    enable = lib.mkEnableOption "the nixos-hydra-upgrade agent, which upgrades this host as soon as Hydra has built its system";

    package = lib.mkOption {
      type = lib.types.package;
      default =
        if self != null then
          self.packages.${pkgs.stdenv.hostPlatform.system}.default
        else
          pkgs.callPackage ./package.nix { };
      defaultText = lib.literalExpression "nixos-hydra-upgrade.packages.\${pkgs.stdenv.hostPlatform.system}.default";
      description = "The nixos-hydra-upgrade package that runs the agent.";
    };

    operation = lib.mkOption {
      type = lib.types.enum [
        "switch"
        "boot"
        "test"
      ];
      default = "switch";
      example = "boot";
      description = ''
        The `nixos-rebuild` operation run for a new build. With `boot` the new system
        becomes active at the next reboot (see {option}`${opt}.allowReboot`).
      '';
    };

    activation = lib.mkOption {
      type = lib.types.enum [
        "store-path"
        "flake"
      ];
      default = if lib.versionAtLeast config.system.nixos.release "26.05" then "store-path" else "flake";
      defaultText = lib.literalExpression ''if lib.versionAtLeast config.system.nixos.release "26.05" then "store-path" else "flake"'';
      example = "flake";
      description = ''
        How the verified build is activated. `store-path` runs
        `nixos-rebuild --store-path <out>` with the exact path Hydra built (needs
        nixos-rebuild-ng, NixOS 26.05 or later); `flake` runs
        `nixos-rebuild --flake <locked flake of the evaluation>#<host>`, which needs a flake
        jobset and flakes enabled on this host.
      '';
    };

    host = lib.mkOption {
      type = lib.types.str;
      default = config.networking.hostName;
      defaultText = lib.literalExpression "config.networking.hostName";
      example = "web1";
      description = ''
        The name of this host in the flake: `nixosConfigurations.<host>` is deployed with
        flake activation. Also the default of {option}`${opt}.hydra.job`.
      '';
    };

    hydra.instance = lib.mkOption {
      type = lib.types.str;
      example = "https://hydra.example.com";
      description = ''
        Base URL of the Hydra instance that builds this host, `https://` in production.
        Every request is checked against this instance's JSON API.
      '';
    };

    hydra.project = lib.mkOption {
      type = lib.types.str;
      example = "nix-config";
      description = "The Hydra project that builds this host's system.";
    };

    hydra.jobset = lib.mkOption {
      type = lib.types.str;
      example = "main";
      description = "The jobset of {option}`${opt}.hydra.project` that builds this host's system.";
    };

    hydra.job = lib.mkOption {
      type = lib.types.str;
      default = cfg.host;
      defaultText = lib.literalExpression "config.system.autoUpgradeHydra.host";
      example = "nixosConfigurations.web1";
      description = ''
        The Hydra job whose output is this host's system (its full attribute path, as Hydra
        shows it). Only builds of this job are ever deployed.
      '';
    };

    healthChecks.canaryHosts = lib.mkOption {
      type = lib.types.listOf lib.types.str;
      default = [ ];
      example = [
        "gateway.lan"
        "10.0.0.1"
      ];
      description = ''
        Hosts that must answer an ICMP echo before an upgrade starts. When any of them does
        not, the attempt ends as `unhealthy` and nothing is activated.
      '';
    };

    flags = lib.mkOption {
      type = lib.types.listOf lib.types.str;
      default = [ ];
      example = [
        "--option"
        "connect-timeout"
        "10"
      ];
      description = ''
        Extra arguments appended to every `nixos-rebuild` command. Flags that deploy
        something other than Hydra's build or break the agent's checks (`--flake`,
        `--profile-name`, `--specialisation`, `--override-input`, …; docs/nixos.md lists them
        with the reasons) are refused by an assertion and by `check-config`.
      '';
    };

    dates = lib.mkOption {
      type = lib.types.str;
      default = "04:40";
      example = "*-*-* 04:40:00";
      description = ''
        When the agent polls Hydra for the newest successful build, in case a notification
        was lost; a calendar event in the format of {manpage}`systemd.time(7)`. The empty
        string disables polling.
      '';
    };

    randomizedDelaySec = lib.mkOption {
      type = lib.types.str;
      default = "0";
      example = "45min";
      description = ''
        Random delay, between zero and this time span, added to each scheduled poll
        (`5s`, `10min`, `1h 30min`).
      '';
    };

    persistent = lib.mkOption {
      type = lib.types.bool;
      default = true;
      example = false;
      description = ''
        Whether to poll at start-up when a scheduled poll was missed while the agent was
        not running, like `Persistent=` of a systemd timer.
      '';
    };

    allowReboot = lib.mkOption {
      type = lib.types.bool;
      default = false;
      description = ''
        Reboot into the new system instead of switching when its kernel, initrd or kernel
        modules differ from the booted system's. See {option}`${opt}.rebootWindow`.
      '';
    };

    rebootWindow = lib.mkOption {
      type = lib.types.nullOr (
        lib.types.submodule {
          options = {
            lower = lib.mkOption {
              type = lib.types.str;
              example = "01:00";
              description = "Start of the reboot window, `HH:MM` local time.";
            };
            upper = lib.mkOption {
              type = lib.types.str;
              example = "05:00";
              description = "End of the reboot window, `HH:MM` local time.";
            };
          };
        }
      );
      default = null;
      example = {
        lower = "01:00";
        upper = "05:00";
      };
      description = ''
        Times (`lower` and `upper`, `HH:MM`) between which a reboot is allowed; outside
        them the reboot is deferred. `lower` later than `upper` spans midnight; `null`
        allows a reboot at any time. Only used with {option}`${opt}.allowReboot`.
      '';
    };

    listen = lib.mkOption {
      type = lib.types.str;
      default = "127.0.0.1:9980";
      example = "[::]:9980";
      description = ''
        Where the agent's HTTP API listens: `host:port` or `unix:/path`. Hydra's
        notifications must reach it, so a host that Hydra notifies listens on a routable
        address (and usually sets {option}`${opt}.openFirewall`).
      '';
    };

    openFirewall = lib.mkOption {
      type = lib.types.bool;
      default = false;
      description = "Whether to open the TCP port of {option}`${opt}.listen` in the firewall.";
    };

    secretFile = lib.mkOption {
      type = lib.types.nullOr lib.types.str;
      default = null;
      example = "/run/secrets/nixos-hydra-upgrade";
      description = ''
        File with the keys that sign notifications, one `whsec_<base64>` per line (the
        first also signs; all verify). Read through systemd's `LoadCredential`, so it can
        be owned by root with mode 0400, and never copied into the Nix store. Without it the
        agent accepts no notification and only polls on {option}`${opt}.dates`.
      '';
    };

    # issue 14 (safety): activation window, gates, clean-up.
    activationWindow = lib.mkOption {
      type = lib.types.nullOr (
        lib.types.submodule {
          options = {
            lower = lib.mkOption {
              type = lib.types.str;
              example = "02:00";
              description = "Start of the activation window, `HH:MM` local time.";
            };
            upper = lib.mkOption {
              type = lib.types.str;
              example = "04:00";
              description = "End of the activation window, `HH:MM` local time.";
            };
          };
        }
      );
      default = null;
      example = {
        lower = "02:00";
        upper = "04:00";
      };
      description = ''
        Times (`lower` and `upper`, `HH:MM`) between which a new system may be switched to;
        outside them the build waits, queued (a newer build replaces it). Fetching the build
        and a boot-only activation happen at any time. `lower` later than `upper` spans
        midnight; `null` allows switching at any time.
      '';
    };

    gates = lib.mkOption {
      type = lib.types.listOf (
        lib.types.submodule {
          options = {
            kind = lib.mkOption {
              type = lib.types.enum [
                "no-sessions"
                "not-metered"
                "command"
              ];
              description = ''
                `no-sessions`: no user is logged in (logind); `not-metered`: NetworkManager
                reports no metered connection; `command`: {option}`argv` exits 0.
              '';
            };
            recheck = lib.mkOption {
              type = lib.types.str;
              default = "5m";
              description = "How often a closed gate is looked at again (`30s`, `5m`, `1h`).";
            };
            argv = lib.mkOption {
              type = lib.types.listOf lib.types.str;
              default = [ ];
              example = [
                "/run/current-system/sw/bin/test"
                "!"
                "-e"
                "/run/maintenance"
              ];
              description = "The program and its arguments, for kind `command` only.";
            };
          };
        }
      );
      default = [ ];
      example = [
        { kind = "no-sessions"; }
        {
          kind = "not-metered";
          recheck = "15m";
        }
      ];
      description = ''
        Conditions that must all hold before a new system is activated. A closed gate defers
        the activation (the build waits, queued) and never fails it.
      '';
    };

    gc.keepGenerations = lib.mkOption {
      type = lib.types.nullOr lib.types.int;
      default = null;
      example = 10;
      description = ''
        After a healthy upgrade, keep the newest this many system generations and collect
        garbage (`nix-env --delete-generations +N`, then `nix-store --gc`); `null` cleans
        nothing.
      '';
    };

    # Fleet rollouts (issue 15, docs/fleet.md): waves after other agents, and the push stagger.
    rollout.after = lib.mkOption {
      type = lib.types.listOf lib.types.str;
      default = [ ];
      example = [ "http://canary1.example.com:9980" ];
      description = ''
        Agents (base URLs) that must run a build first: this host activates a build only
        once each of them has deployed it, or a newer one, is idle with last outcome
        `upgraded`, and has run it for {option}`${opt}.rollout.bake`. Read from their
        `/v1/status`, so their API must be reachable from this host. Empty: no waves.
      '';
    };

    rollout.bake = lib.mkOption {
      type = lib.types.str;
      default = "30m";
      example = "2h";
      description = ''
        How long each agent of {option}`${opt}.rollout.after` must have run the build
        healthily before this host activates it.
      '';
    };

    rollout.timeout = lib.mkOption {
      type = lib.types.str;
      default = "24h";
      example = "3d";
      description = ''
        How long after a build was queued this host waits for its wave; then the attempt
        ends as `deferred-timeout` and the build is not activated (a newer one may be).
      '';
    };

    pushDelay = lib.mkOption {
      type = lib.types.str;
      default = "0s";
      example = "5min";
      description = ''
        Random delay, between zero and this time span, before a build pushed by Hydra is
        fetched and activated, so a large fleet does not hit the binary cache in one second.
      '';
    };

    settings = lib.mkOption {
      inherit (settingsFormat) type;
      default = { };
      example = {
        log_format = "text";
        activation_timeout = "2h";
        hydra.timeout = "30s";
      };
      description = ''
        Further keys of the agent's configuration file, merged into the generated one, for
        keys that no option above sets (`activation_timeout`, `log_format`,
        `signature_tolerance`, `hydra.timeout`, `health_checks.timeout`, …).
      '';
    };
  };

  config = lib.mkIf cfg.enable {
    assertions = [
      {
        assertion = !config.system.autoUpgrade.enable;
        message = ''
          ${opt}.enable and system.autoUpgrade.enable are both set: two upgraders would race
          over the system profile. Remove system.autoUpgrade; ${opt}.dates polls Hydra instead.
        '';
      }
      {
        assertion = cfg.secretFile == null || lib.hasPrefix "/" cfg.secretFile;
        message = ''
          ${opt}.secretFile = "${toString cfg.secretFile}" is not an absolute path. Give the
          absolute path of a file on this host, e.g. "/run/secrets/nixos-hydra-upgrade".
        '';
      }
      {
        assertion = cfg.secretFile == null || !lib.hasPrefix "${builtins.storeDir}/" cfg.secretFile;
        message = ''
          ${opt}.secretFile = "${toString cfg.secretFile}" is in the Nix store, which every
          user can read. Keep the key outside the store (agenix, sops-nix, or a root-only file)
          and give its path as a string, not a Nix path literal.
        '';
      }
      {
        assertion = cfg.secretFile != null || cfg.dates != "";
        message = ''
          ${opt} has neither secretFile (no notifications) nor dates (no polling), so it can
          never upgrade. Set ${opt}.secretFile, or ${opt}.dates (default "04:40").
        '';
      }
      {
        assertion = cfg.host != "";
        message = ''
          ${opt}.host is empty (networking.hostName is empty, e.g. set by DHCP). Set
          ${opt}.host to this host's name in the flake (and ${opt}.hydra.job if it differs).
        '';
      }
      {
        assertion = instanceMatch != null;
        message = ''
          ${opt}.hydra.instance = "${cfg.hydra.instance}" is not an http(s) URL. Give the base
          URL of the Hydra web interface, e.g. "https://hydra.example.com".
        '';
      }
      {
        assertion =
          cfg.activation != "store-path" || lib.versionAtLeast config.system.nixos.release "26.05";
        message = ''
          ${opt}.activation = "store-path" needs `nixos-rebuild --store-path`, which exists from
          NixOS 26.05 on; this system is NixOS ${config.system.nixos.release}. Set
          ${opt}.activation = "flake" (the Hydra jobset must then be a flake jobset).
        '';
      }
      {
        assertion =
          cfg.rebootWindow == null || (validTime cfg.rebootWindow.lower && validTime cfg.rebootWindow.upper);
        message = ''
          ${opt}.rebootWindow must be two times "HH:MM" (00:00 to 23:59); got lower =
          "${cfg.rebootWindow.lower or ""}", upper = "${cfg.rebootWindow.upper or ""}".
        '';
      }
      {
        assertion = cfg.rebootWindow == null || cfg.rebootWindow.lower != cfg.rebootWindow.upper;
        message = ''
          ${opt}.rebootWindow has lower = upper = "${cfg.rebootWindow.lower or ""}", which is
          ambiguous. Use null to allow a reboot at any time, or a window of some length.
        '';
      }
      {
        assertion = listenIsUnix || listenMatch != null;
        message = ''
          ${opt}.listen = "${cfg.listen}" is neither "host:port" nor "unix:/path". Examples:
          "127.0.0.1:9980", "[::]:9980", "unix:/run/nixos-hydra-upgrade/api.sock".
        '';
      }
      {
        assertion = !cfg.openFirewall || (listenMatch != null && !isLoopback listenHost);
        message = ''
          ${opt}.openFirewall is set, but ${opt}.listen = "${cfg.listen}" accepts no
          connection from other hosts. Listen on a routable address, e.g. "0.0.0.0:9980" or
          "[::]:9980", or drop openFirewall.
        '';
      }
      {
        assertion = clashingKeys == [ ];
        message = ''
          ${opt}.settings sets ${lib.concatMapStringsSep ", " (lib.concatStringsSep ".") clashingKeys},
          which options of ${opt} already set. Use the options (see the option table), and
          settings only for the other keys.
        '';
      }
    ]
    ++ flagAssertions;

    warnings =
      lib.optional (cfg.secretFile == null) ''
        ${opt}.secretFile is not set: the agent rejects every notification (401) and only
        polls Hydra on ${opt}.dates ("${cfg.dates}"). Set secretFile to upgrade as soon as
        Hydra's build finishes.
      ''
      ++ lib.optional (cfg.rebootWindow != null && !cfg.allowReboot) ''
        ${opt}.rebootWindow has no effect while ${opt}.allowReboot is false.
      ''
      ++ lib.optional instanceIsPlainRemoteHttp ''
        ${opt}.hydra.instance uses plain http: the agent deploys the store path that Hydra's
        API names, so that answer must not be open to tampering on the way. Use https.
      ''
      ++ lib.optional (cfg.activation == "flake" && !flakesEnabled) ''
        ${opt}.activation = "flake" runs `nixos-rebuild --flake`, but nix.settings.experimental-features
        does not list "nix-command" and "flakes"; add them unless they are enabled elsewhere.
      '';

    environment.systemPackages = [ cfg.package ];
    # The default config path of `status`, `check` and `check-config`, so they need no flags here.
    environment.etc."nixos-hydra-upgrade/config.toml".source = configFile;

    networking.firewall.allowedTCPPorts = lib.optional (
      cfg.openFirewall && listenPort != null
    ) listenPort;

    systemd.services.nixos-hydra-upgrade = {
      description = "Upgrade NixOS when Hydra has built this host";
      wantedBy = [ "multi-user.target" ];
      after = [ "network-online.target" ];
      wants = [ "network-online.target" ];

      # The agent switches the system it runs on: a switch must neither restart nor stop it
      # mid-upgrade. After a switch that changed its own unit it exits 0 and Restart=always
      # starts the new version.
      restartIfChanged = false;
      unitConfig.X-StopOnRemoval = false;

      # nix fetches and diffs closures; nixos-rebuild activates; systemd-run (which
      # nixos-rebuild runs switch-to-configuration under) and systemctl; git and ssh fetch
      # git+… and git+ssh:// flakes, as nixpkgs' auto-upgrade.nix provides them.
      path = [
        config.nix.package.out
        config.system.build.nixos-rebuild
        config.systemd.package
        pkgs.gitMinimal
        config.programs.ssh.package
      ];

      # As system.autoUpgrade does: Nix and proxy settings, NIX_PATH, and a HOME for Nix's cache.
      environment =
        config.nix.envVars
        // lib.optionalAttrs (config.environment.sessionVariables ? NIX_PATH) {
          inherit (config.environment.sessionVariables) NIX_PATH;
        }
        // {
          HOME = "/root";
        }
        // config.networking.proxy.envVars;

      serviceConfig = {
        # READY=1 once the API listens; STATUS= follows the worker's phase. The worker itself
        # feeds the watchdog, through long activations too (up to their timeouts): a wedged
        # worker stops, and systemd restarts the agent. Hook and nixos-rebuild children get
        # no NOTIFY_SOCKET (and NotifyAccess=main would ignore them anyway).
        Type = "notify";
        NotifyAccess = "main";
        WatchdogSec = "2min";
        ExecStart = "${lib.getExe cfg.package} serve --config ${configFile}";
        Restart = "always";
        RestartSec = "5s";
        TimeoutStopSec = "30s";
        LoadCredential = lib.optional (cfg.secretFile != null) "secret:${cfg.secretFile}";
        StateDirectory = "nixos-hydra-upgrade";
        StateDirectoryMode = "0700";
        RuntimeDirectory = "nixos-hydra-upgrade";
        RuntimeDirectoryMode = "0755";

        # Hardening, deliberately small. The agent runs as root because it installs whole
        # systems; its children (nix, nixos-rebuild, and before NixOS 24.05 the activation
        # itself) inherit every restriction set here. So none of these is set:
        # - ProtectSystem/ProtectHome/PrivateTmp/PrivateDevices/ProtectKernel*/ProtectHostname:
        #   they put the unit in its own mount or UTS namespace; activation mounts and hostname
        #   changes would stay invisible to the host, and Nix must write /nix and $HOME/.cache.
        # - RestrictNamespaces, SystemCallFilter, LockPersonality, SystemCallArchitectures,
        #   MemoryDenyWriteExecute: Nix's build sandbox and i686 builds need what they forbid.
        # - RestrictSUIDSGID, UMask=0077: activation creates setuid wrappers and /etc files.
        # - CapabilityBoundingSet, IPAddressDeny/Allow: root's Nix and the ICMP canary
        #   checks need capabilities and the network.
        # What is safe for a root process whose children run nixos-rebuild:
        NoNewPrivileges = true; # nothing in the tree gains privileges through setuid binaries
      };
    };
  };
}
