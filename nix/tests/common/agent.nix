# The agent's side of the VM tests: the module, pointed at the `hydra` node, listening for
# notifications, its key at `keyFile` (written by the test script, so it is in no store path)
# and the unit started by the script once the key exists.
{
  self,
  project,
  jobset,
  job,
  keyFile,
  instance ? "http://hydra",
}:
{ lib, pkgs, ... }:
{
  imports = [ self.nixosModules.default ];

  system.autoUpgradeHydra = {
    enable = true;
    activation = "store-path";
    hydra = {
      inherit
        instance
        project
        jobset
        job
        ;
    };
    dates = ""; # only notifications upgrade, unless a test sets a schedule
    listen = "0.0.0.0:9980";
    openFirewall = true;
    secretFile = keyFile;
  };
  systemd.services.nixos-hydra-upgrade.wantedBy = lib.mkForce [ ];

  environment.etc.marker.text = lib.mkDefault "old";
  nix.settings.substituters = lib.mkForce [ ];
  environment.systemPackages = [
    pkgs.curl
    pkgs.jq
  ];
}
