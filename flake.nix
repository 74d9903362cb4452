{
  description = "nixrepro: reproducible ML experiment runs, pinned by Nix";

  # A stable nixpkgs release, pinned by rev and narHash in flake.lock.
  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-25.05";

  outputs = { self, nixpkgs }:
    let
      systems = [ "x86_64-linux" "aarch64-linux" ];
      # builtins only (no nixpkgs.lib): evaluating the flake needs nothing but nixpkgs' packages
      forAllSystems = f: builtins.listToAttrs (map (system: {
        name = system;
        value = f nixpkgs.legacyPackages.${system};
      }) systems);
      nixreproLib = import ./nix/lib.nix { inherit self; };
    in {
      lib = nixreproLib;

      packages = forAllSystems (pkgs: {
        default = pkgs.python3Packages.toPythonApplication (nixreproLib.pythonPackage pkgs.python3Packages);
      });

      apps = forAllSystems (pkgs: {
        default = { type = "app"; program = "${self.packages.${pkgs.system}.default}/bin/nixrepro"; };
      });

      devShells = forAllSystems (pkgs: {
        default = pkgs.mkShell {
          packages = [
            (pkgs.python3.withPackages (ps: [ (nixreproLib.pythonPackage ps) ps.pytest ]))
            pkgs.git
          ];
        };
      });

      checks = forAllSystems (pkgs: {
        package = self.packages.${pkgs.system}.default;
      });

      templates = {
        minimal = {
          path = ./templates/minimal;
          description = "An experiment recorded by nixrepro: numpy, logistic regression, nix run .#experiment";
          welcomeText = ''
            # A nixrepro experiment

            ```sh
            nix flake lock                                  # pin nixpkgs and nixrepro: writes flake.lock
            git init && git add -A && git commit -m init   # nixrepro records commits, not dirty trees
            nix run .#experiment -- --lr 0.1                # build the env, run train.py, record the run
            nix develop -c nixrepro runs                    # what was recorded
            ```
          '';
        };
        pytorch-cuda = {
          path = ./templates/pytorch-cuda;
          description = "A PyTorch experiment with CUDA (cudaSupport, explicit cudaCapabilities), recorded by nixrepro";
          welcomeText = ''
            # A nixrepro PyTorch + CUDA experiment

            First set `cudaCapabilities` in flake.nix to your GPUs
            (`nvidia-smi --query-gpu=compute_cap --format=csv`), then:

            ```sh
            nix flake lock                                  # pin nixpkgs and nixrepro: writes flake.lock
            git init && git add -A && git commit -m init
            nix run .#experiment -- --lr 0.01
            ```

            The NVIDIA driver comes from the host (it cannot be pinned); nixrepro records it and
            refuses a driver older than the CUDA runtime needs. See README.md in this directory.
          '';
        };
        default = self.templates.minimal;
      };
    };
}
