# The flake's `lib`: nixrepro as a Python package for any package set, and mkExperiment.
{ self }:
rec {
  # nixrepro for a python3Packages set (so it can go into an experiment's python3.withPackages).
  pythonPackage = ps: ps.buildPythonPackage {
    pname = "nixrepro";
    version = "0.1.0";
    pyproject = true;
    src = self;
    build-system = [ ps.setuptools ];
    dependencies = [ ps.click ps.boto3 ps.wandb ];
    pythonImportsCheck = [ "nixrepro" ];
    doCheck = false; # the suite needs git, a Nix store and an S3 server: CI runs it
  };

  # An app that runs `command` in `env` through `nixrepro run`, with the facts of this build.
  # The facts file is written at evaluation time: the flake's rev (absent when the tree is dirty),
  # its narHash, the sha256 of flake.lock, the env, the system, the nixpkgs rev and the evaluated
  # nixpkgs config that matters for reproduction. `nixrepro run` refuses a build whose facts do
  # not match the checkout.
  mkExperiment = { pkgs, self, env, command, nixpkgs ? null, nixrepro ? null }:
    let
      lockFile = self + "/flake.lock";
      tool = if nixrepro != null then nixrepro
             else pkgs.python3Packages.toPythonApplication (pythonPackage pkgs.python3Packages);
      facts = pkgs.writeText "nixrepro-facts.json" (builtins.toJSON {
        schema = "nixrepro.facts/1";
        rev = self.rev or null;
        narHash = self.narHash or null;
        flakeLockSha256 = if builtins.pathExists lockFile then builtins.hashFile "sha256" lockFile else null;
        env = "${env}";
        system = pkgs.system;
        nixpkgsRev = if nixpkgs != null then nixpkgs.rev or null else null;
        nixpkgsConfig = {
          cudaSupport = pkgs.config.cudaSupport or false;
          cudaCapabilities = pkgs.config.cudaCapabilities or [ ];
          allowUnfree = pkgs.config.allowUnfree or false;
        };
      });
      script = pkgs.writeShellScript "nixrepro-experiment" ''
        exec ${tool}/bin/nixrepro run --facts ${facts} --env ${env} -- ${command} "$@"
      '';
    in { type = "app"; program = "${script}"; };
}
