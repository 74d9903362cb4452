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
  mkExperiment = { pkgs, self, env, command, nixpkgs ? null, nixrepro ? null, hostDriver ? false }:
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
      # hostDriver = true: on a host that is not NixOS (Debian, Ubuntu, a cluster, WSL) the app
      # puts the host's NVIDIA driver on LD_LIBRARY_PATH *before* `nixrepro run` starts. nixrepro
      # collects the CUDA facts (which libcuda, its sha256, how it got there) from its own
      # environment, which the command inherits, so they describe the process that runs. Only the
      # driver's libraries are linked, into a private directory: the host's library directory
      # itself also holds its libc and every other library, which would shadow the pinned ones and
      # break Nix-built programs. NIXREPRO_DRIVER_SEARCH_PATH replaces the directories searched.
      script =
        let
          bin = "${pkgs.coreutils}/bin"; # not the host's PATH: the script runs before anything else
          hostDriverSetup = ''
            nixrepro_host_driver() {
              # NixOS: nixpkgs' CUDA libraries find the driver through their runpath
              [ -f /run/opengl-driver/lib/libcuda.so.1 ] && return 0
              set -f; IFS=:
              # a driver already on LD_LIBRARY_PATH (nixGL, nix-gl-host, by hand) is the user's choice
              for dir in ''${LD_LIBRARY_PATH:-}; do
                if [ -n "$dir" ] && [ -f "$dir/libcuda.so.1" ]; then set +f; unset IFS; return 0; fi
              done
              from=""
              for dir in ''${NIXREPRO_DRIVER_SEARCH_PATH:-/usr/lib/wsl/lib:/usr/lib/x86_64-linux-gnu:/usr/lib/aarch64-linux-gnu:/usr/lib64:/usr/lib:/usr/local/nvidia/lib64}; do
                if [ -n "$dir" ] && [ -f "$dir/libcuda.so.1" ]; then from=$dir; break; fi
              done
              set +f; unset IFS
              [ -n "$from" ] || return 0 # no driver: the experiment runs on the CPU and says so
              # The XDG spec ignores a relative XDG_CACHE_HOME; a ':' would split the directory
              # into two LD_LIBRARY_PATH entries, and the loader would never find the driver.
              cache=''${XDG_CACHE_HOME:-}
              case $cache in /*:*|[!/]*) cache="" ;; esac
              if [ -z "$cache" ] && [ -n "''${HOME:-}" ]; then cache=$HOME/.cache; fi
              case $cache in
                /*:*|""|[!/]*)
                  echo "nixrepro: warning: no cache directory usable on LD_LIBRARY_PATH (XDG_CACHE_HOME and HOME unset, relative or holding a ':'), so the NVIDIA driver in $from is not put on LD_LIBRARY_PATH; set HOME to an absolute path without ':' and run again." >&2
                  return 0 ;;
              esac
              # One directory per source directory, so a link's target never changes: links are
              # only added, never replaced under a run that is starting at the same time, and
              # the ones a driver upgrade left dangling are removed.
              private="$cache/nixrepro/host-driver$from"
              ${bin}/mkdir -p "$private" || return 0
              for lib in "$private"/*; do
                if [ -L "$lib" ] && [ ! -e "$lib" ]; then ${bin}/rm -f "$lib"; fi
              done
              # the driver's own libraries; libdxcore and libnvdxgdmal are what WSL's libcuda loads
              for lib in "$from"/libcuda.so* "$from"/libnvidia-*.so* "$from"/libdxcore.so* "$from"/libnvdxgdmal.so*; do
                if [ -e "$lib" ] && [ ! -L "$private/''${lib##*/}" ]; then
                  ${bin}/ln -s "$lib" "$private/''${lib##*/}" 2>/dev/null || :
                fi
              done
              export LD_LIBRARY_PATH="$private''${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
              export NIXREPRO_DRIVER_DIR="$private" # nixrepro names this injection "host-driver"
            }
            nixrepro_host_driver
          '';
        in
        pkgs.writeShellScript "nixrepro-experiment" ((if hostDriver then hostDriverSetup else "") + ''
          exec ${tool}/bin/nixrepro run --facts ${facts} --env ${env} -- ${command} "$@"
        '');
    in { type = "app"; program = "${script}"; };
}
