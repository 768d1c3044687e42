# NixOS configuration for the Hydra host: installs the sender and tells Hydra to run it.
#
# Import it into the Hydra host's configuration (it needs the flake's `inputs` in specialArgs)
# and edit the `let` block. Every host listed here runs the agent with the same key in its
# system.autoUpgradeHydra.secretFile.
{
  inputs,
  lib,
  pkgs,
  ...
}:
let
  project = "nix-config";
  jobset = "main";
  # Hydra job (full attribute path) = URL of that host's agent.
  hosts = {
    "nixosConfigurations.web1" = "http://web1.example.com:9980/v1/upgrade";
    "nixosConfigurations.db1" = "http://db1.example.com:9980/v1/upgrade";
  };
  # Written by root, agenix or sops-nix; never put its content in this file or the store.
  keyFile = "/var/lib/hydra/nixos-hydra-upgrade.key";

  package = inputs.nixos-hydra-upgrade.packages.${pkgs.stdenv.hostPlatform.system}.default;
  # Job names and URLs go unquoted into hydra.conf and /bin/sh: keep them free of shell syntax.
  routes = lib.mapAttrsToList (job: url: "--route ${job}=${url}") hosts;
in
{
  environment.systemPackages = [ package ];

  # One block for the jobset; each build goes only to the host whose job it is. The command
  # names the key's file, not the key: Hydra shows command lines and output in its web UI.
  services.hydra.extraConfig = ''
    <runcommand>
      job = ${project}:${jobset}:*
      command = ${lib.getExe package} notify --secret-file ${keyFile} ${toString routes}
    </runcommand>
  '';

  # Only hydra-queue-runner (which runs hydra-notify, which runs RunCommand) may read the key.
  # `z` sets owner and mode of the existing file at boot and on every switch; it never creates
  # it. With sops-nix instead:
  #   sops.secrets.nixos-hydra-upgrade = { owner = "hydra-queue-runner"; path = keyFile; };
  systemd.tmpfiles.settings."10-nixos-hydra-upgrade".${keyFile}.z = {
    user = "hydra-queue-runner";
    group = "hydra";
    mode = "0400";
  };
}
