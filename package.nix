# The nixos-hydra-upgrade binary, built from this repository with nixpkgs' Rust tooling.
{
  lib,
  rustPlatform,
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
      ./src
      (fs.maybeMissing ./tests)
      (fs.maybeMissing ./examples)
    ];
  };

  cargoLock.lockFile = ./Cargo.lock;

  # The tests need network namespaces, root and ICMP, which the build sandbox lacks; CI runs them.
  doCheck = false;

  meta = {
    inherit (cargoToml.package) description;
    license = lib.licenses.mit;
    mainProgram = "nixos-hydra-upgrade";
    platforms = lib.platforms.linux;
  };
}
