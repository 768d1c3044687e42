# The `hydra` node of the VM tests that need no real Hydra: nginx serves Hydra's JSON answers
# for the builds given (`/build/<id>`, and `/job/…/latest` as a 302 to the newest), and the
# node has the sender and each build's RunCommand payload as /etc/payload-<id>.json.
# hydra.nix runs a real Hydra instead.
{
  pkgs,
  self,
  project,
  jobset,
  job,
  # build id (a string) -> the system's store path, its string context discarded so this
  # node's closure does not include it
  builds,
}:
let
  ids = builtins.attrNames builds;
  newest = toString (builtins.foldl' (a: b: if a > b then a else b) 0 (map pkgs.lib.toInt ids));
  build = id: path: {
    id = pkgs.lib.toInt id;
    inherit project jobset job;
    finished = 1;
    buildstatus = 0;
    system = pkgs.stdenv.hostPlatform.system;
    nixname = "nixos-system-${job}";
    jobsetevals = [ (pkgs.lib.toInt id) ];
    buildoutputs.out.path = path;
  };
  json = name: value: pkgs.writeText name (builtins.toJSON value);
  payload =
    id: path:
    json "payload-${id}.json" {
      event = "buildFinished";
      build = pkgs.lib.toInt id;
      finished = true;
      buildStatus = 0;
      inherit project jobset job;
      system = pkgs.stdenv.hostPlatform.system;
      outputs = [
        {
          name = "out";
          inherit path;
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
        root = pkgs.linkFarm "fake-hydra" (
          pkgs.lib.mapAttrs' (
            id: path: pkgs.lib.nameValuePair "build/${id}" (json "build-${id}" (build id path))
          ) builds
        );
        extraConfig = "default_type application/json;";
      };
      locations."= /job/${project}/${jobset}/${job}/latest".return = "302 http://hydra/build/${newest}";
    };
  };
  networking.firewall.allowedTCPPorts = [ 80 ];
  environment.etc = pkgs.lib.mapAttrs' (
    id: path: pkgs.lib.nameValuePair "payload-${id}.json" { source = payload id path; }
  ) builds;
  environment.systemPackages = [
    self.packages.${pkgs.stdenv.hostPlatform.system}.default
    pkgs.curl
    pkgs.jq
  ];
}
