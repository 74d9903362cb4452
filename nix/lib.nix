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
  # The facts file is written at evaluation time: the flake's rev (absent when the tree is dirty or
  # the flake is a path: flake), whether its source is a git tree, its narHash, flake.lock (its
  # sha256 and its text: a flake run by reference, not from the checkout, is recorded from the lock
  # it was built with), the rev and narHash of every input as it was evaluated (an
  # --override-input shows here, not in flake.lock), the env, the system, the nixpkgs rev and the
  # evaluated nixpkgs config that matters for reproduction. `nixrepro run` refuses a build whose
  # facts do not match the checkout or its flake.lock.
  mkExperiment = { pkgs, self, env, command, nixpkgs ? null, nixrepro ? null }:
    let
      lockFile = self + "/flake.lock";
      hasLock = builtins.pathExists lockFile;
      tool = if nixrepro != null then nixrepro
             else pkgs.python3Packages.toPythonApplication (pythonPackage pkgs.python3Packages);
      # Reading rev/narHash fetches each root input (they are all in flake.lock, and
      # `nix flake archive` fetches them too). `follows = ""` makes an input the flake itself.
      evaluated = input: { rev = input.rev or null; narHash = input.narHash or null; };
      facts = pkgs.writeText "nixrepro-facts.json" (builtins.toJSON {
        schema = "nixrepro.facts/1";
        rev = self.rev or null;
        dirtyRev = self.dirtyRev or null;
        # Nix gives a git source (clean or dirty) a `submodules` attribute, and a path: flake none
        git = self ? submodules;
        narHash = self.narHash or null;
        lastModified = self.lastModified or null;
        flakeLockSha256 = if hasLock then builtins.hashFile "sha256" lockFile else null;
        flakeLock = if hasLock then builtins.readFile lockFile else null;
        inputs = builtins.mapAttrs (name: evaluated) (self.inputs or { });
        env = "${env}";
        system = pkgs.system;
        nixpkgsRev = if nixpkgs != null then nixpkgs.rev or null else null;
        nixpkgsNarHash = if nixpkgs != null then nixpkgs.narHash or null else null;
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
