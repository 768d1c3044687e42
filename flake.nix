{
  description = "Upgrades NixOS hosts the moment Hydra has built their system";

  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-unstable";

  outputs =
    { self, nixpkgs }:
    let
      inherit (nixpkgs) lib;

      systems = [
        "x86_64-linux"
        "aarch64-linux"
      ];
      forAllSystems = f: lib.genAttrs systems (system: f nixpkgs.legacyPackages.${system});

      # The README's option table, rendered from the module's declarations (checks.options-doc).
      optionsTable =
        options:
        let
          docs = lib.filter (o: o.visible && !o.internal) (lib.optionAttrSetToDocList options);
          # rebootWindow.lower/upper are described in the rebootWindow row
          top = lib.filter (o: !lib.any (p: lib.hasPrefix "${p.name}." o.name) docs) docs;
          summary =
            description:
            let
              text = builtins.replaceStrings [ "{option}" "{manpage}" "\n" ] [ "" "" " " ] description;
              first = builtins.head (builtins.split "\\.( |$)" text);
            in
            "${lib.removeSuffix "." (lib.trim first)}.";
          cell = o: if o ? default then "`${o.default.text}`" else "*required*";
          row = o: "| `${o.name}` | ${o.type} | ${cell o} | ${summary o.description} |";
        in
        lib.concatLines (
          [
            "| Option | Type | Default | Description |"
            "|---|---|---|---|"
          ]
          ++ map row top
        );

      nixosFor =
        system: module:
        lib.nixosSystem {
          modules = [
            self.nixosModules.default
            {
              nixpkgs.hostPlatform = system;
              boot.loader.grub.enable = false;
              fileSystems."/".device = "nodev";
              networking.hostName = "hostname";
              system.stateVersion = "26.05";
            }
            module
          ];
        };

      # The configuration of the original tool's users: it must evaluate unchanged.
      legacyConfig = {
        system.autoUpgradeHydra = {
          enable = true;
          operation = "boot";
          host = "hostname";
          hydra = {
            instance = "https://your.hydra.example.com";
            project = "nix-config";
            jobset = "main";
            job = "hostname";
          };
          healthChecks.canaryHosts = [ "yourcanaryhostname" ];
          flags = [ ];
          dates = "*-*-* 04:40:00";
          allowReboot = false;
        };
      };

      fullConfig = {
        system.autoUpgradeHydra = {
          enable = true;
          operation = "switch";
          activation = "store-path";
          hydra = {
            instance = "https://hydra.example.com";
            project = "nix-config";
            jobset = "main";
            job = "nixosConfigurations.hostname";
          };
          healthChecks.canaryHosts = [ "gateway.lan" ];
          flags = [ "-L" ];
          dates = "*-*-* 04:40:00";
          randomizedDelaySec = "45min";
          allowReboot = true;
          rebootWindow = {
            lower = "01:00";
            upper = "05:00";
          };
          listen = "[::]:9980";
          openFirewall = true;
          secretFile = "/run/secrets/nixos-hydra-upgrade";
          settings = {
            log_format = "text";
            hydra.timeout = "30s";
          };
        };
      };
    in
    {
      packages = forAllSystems (pkgs: {
        default = pkgs.callPackage ./package.nix { };
        nixos-hydra-upgrade = self.packages.${pkgs.stdenv.hostPlatform.system}.default;
      });

      overlays.default = final: _prev: { nixos-hydra-upgrade = final.callPackage ./package.nix { }; };

      nixosModules = {
        default = self.nixosModules.nixos-hydra-upgrade;
        nixos-hydra-upgrade = lib.modules.importApply ./module.nix { inherit self; };
        # For the Hydra host: RunCommand, the key as a credential, and the retrier.
        hydra-host = lib.modules.importApply ./hydra-plugin-config/hydra-host.nix { inherit self; };
      };

      checks = forAllSystems (
        pkgs:
        let
          inherit (pkgs.stdenv.hostPlatform) system;

          # Fails evaluation with the assertion messages, or is the rendered, check-config'd unit.
          unitOf =
            module:
            let
              inherit ((nixosFor system module).config) assertions systemd;
              failed = map (a: a.message) (lib.filter (a: !a.assertion) assertions);
            in
            if failed != [ ] then
              throw (lib.concatStringsSep "\n" failed)
            else
              "${systemd.units."nixos-hydra-upgrade.service".unit}/nixos-hydra-upgrade.service";

          tests =
            lib.mapAttrs'
              (
                file: _:
                lib.nameValuePair (lib.removeSuffix ".nix" file) (
                  import (./nix/tests + "/${file}") { inherit pkgs self; }
                )
              )
              (
                lib.filterAttrs (name: type: type == "regular" && lib.hasSuffix ".nix" name) (
                  builtins.readDir ./nix/tests
                )
              );

          # The Hydra host's units as hydra-host.nix renders them next to nixpkgs' services.hydra.
          hydraHostUnits =
            let
              inherit
                ((lib.nixosSystem {
                  modules = [
                    self.nixosModules.hydra-host
                    {
                      nixpkgs.hostPlatform = system;
                      boot.loader.grub.enable = false;
                      fileSystems."/".device = "nodev";
                      system.stateVersion = "26.05";
                      services.hydra = {
                        enable = true;
                        hydraURL = "http://hydra.example.com";
                        notificationSender = "hydra@example.com";
                      };
                      services.nixos-hydra-upgrade-hydra = {
                        enable = true;
                        project = "nix-config";
                        jobset = "main";
                        hosts."nixosConfigurations.web1" = "http://web1.example.com:9980";
                        keyFile = "/run/keys/nixos-hydra-upgrade";
                      };
                    }
                  ];
                }).config.systemd
                )
                units
                ;
              file = name: "${units.${name}.unit}/${name}";
            in
            {
              notify = file "hydra-notify.service";
              retry = file "nixos-hydra-upgrade-retry.service";
            };

          # Each table between the markers in docs/nixos.md and README.md (once pasted there).
          documented =
            lib.concatMap
              (
                file:
                let
                  parts = lib.splitString "<!-- options-table:begin -->" (builtins.readFile file);
                  table = builtins.head (lib.splitString "<!-- options-table:end -->" (builtins.elemAt parts 1));
                in
                lib.optional (builtins.length parts > 1) (pkgs.writeText "documented.md" (lib.trim table))
              )
              (
                lib.filter builtins.pathExists [
                  ./docs/nixos.md
                  ./README.md
                ]
              );
          generated = pkgs.writeText "generated.md" (
            lib.trim (optionsTable (nixosFor system { }).options.system.autoUpgradeHydra)
          );
        in
        {
          package = self.packages.${system}.default;

          module-eval = pkgs.runCommand "nixos-hydra-upgrade-module-eval" { } ''
            mkdir "$out"
            cp ${unitOf legacyConfig} "$out/legacy.service"
            cp ${unitOf fullConfig} "$out/full.service"
            cp ${hydraHostUnits.notify} "$out/hydra-notify.service"
            cp ${hydraHostUnits.retry} "$out/nixos-hydra-upgrade-retry.service"
            grep -q 'LoadCredential=nixos-hydra-upgrade-key:/run/keys/nixos-hydra-upgrade' "$out/hydra-notify.service"
          '';

          options-doc = pkgs.runCommand "nixos-hydra-upgrade-options-doc" { } ''
            for table in ${toString documented}; do
              if ! diff -u "$table" ${generated}; then
                echo "the option table in docs/nixos.md or README.md differs from module.nix;" >&2
                echo "replace it with the + lines" >&2
                exit 1
              fi
            done
            test -n "${toString documented}" || { echo "no option table found" >&2; exit 1; }
            touch "$out"
          '';
        }
        // tests
      );

      devShells = forAllSystems (pkgs: {
        default = pkgs.mkShell {
          inputsFrom = [ self.packages.${pkgs.stdenv.hostPlatform.system}.default ];
          packages = [
            pkgs.clippy
            pkgs.rustfmt
            pkgs.rust-analyzer
            pkgs.nixfmt
            pkgs.deadnix
            pkgs.jq
            pkgs.openssl
            pkgs.curl
          ];
        };
      });

      formatter = forAllSystems (pkgs: pkgs.nixfmt);
    };
}
