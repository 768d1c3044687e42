# The nixos-hydra-upgrade binary, built from this repository with nixpkgs' Rust tooling.
{
  lib,
  rustPlatform,
  installShellFiles,
}:
let
  fs = lib.fileset;
  cargoToml = lib.importTOML ./Cargo.toml;
in
rustPlatform.buildRustPackage {
  pname = cargoToml.package.name;
  inherit (cargoToml.package) version;

  # Only what cargo reads: editing docs, Nix files or CI scripts does not rebuild the package.
  src = fs.toSource {
    root = ./.;
    fileset = fs.unions [
      ./Cargo.toml
      ./Cargo.lock
      ./build.rs
      ./src
      (fs.maybeMissing ./tests)
      (fs.maybeMissing ./examples)
    ];
  };

  cargoLock.lockFile = ./Cargo.lock;

  # build.rs writes completions and man pages next to the build script's output.
  nativeBuildInputs = [ installShellFiles ];
  postInstall = ''
    assets=$(echo $releaseDir/build/nixos-hydra-upgrade-*/out/assets)
    installShellCompletion --cmd nixos-hydra-upgrade \
      --bash $assets/completions/nixos-hydra-upgrade.bash \
      --fish $assets/completions/nixos-hydra-upgrade.fish \
      --zsh $assets/completions/_nixos-hydra-upgrade
    installManPage $assets/man/*.1
  '';

  # The tests need network namespaces, root and ICMP, which the build sandbox lacks; CI runs them.
  doCheck = false;

  meta = {
    inherit (cargoToml.package) description;
    license = lib.licenses.mit;
    mainProgram = "nixos-hydra-upgrade";
    platforms = lib.platforms.linux;
  };
}
