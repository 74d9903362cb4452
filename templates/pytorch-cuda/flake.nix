{
  description = "A PyTorch + CUDA experiment whose runs nixrepro records with the identity of their environment";

  inputs = {
    nixpkgs.url = "github:NixOS/nixpkgs/nixos-25.05";
    nixrepro.url = "github:nixrepro/nixrepro";
    nixrepro.inputs.nixpkgs.follows = "nixpkgs";
  };

  outputs = { self, nixpkgs, nixrepro }:
    let
      system = "x86_64-linux";
      pkgs = import nixpkgs {
        inherit system;
        config = {
          allowUnfree = true; # CUDA is unfree
          cudaSupport = true;
          # The GPUs this build runs on: `nvidia-smi --query-gpu=compute_cap --format=csv`.
          # Fewer capabilities build faster; nixrepro refuses a GPU that is not in this list.
          cudaCapabilities = [ "8.0" "8.6" "8.9" "9.0" ];
          cudaForwardCompat = false;
        };
      };
      env = pkgs.python3.withPackages (ps: [ ps.torch ps.numpy (nixrepro.lib.pythonPackage ps) ]);
      # The NVIDIA driver (libcuda.so) cannot be pinned: it must match the host's kernel module.
      # On NixOS it is in /run/opengl-driver/lib, which nixpkgs' CUDA packages find through the
      # runpath autoAddDriverRunpath adds. Elsewhere, point LD_LIBRARY_PATH at the host's driver
      # (e.g. /usr/lib/x86_64-linux-gnu); nixrepro records the libcuda that will load and its sha256.
      command = pkgs.writeShellScript "train" ''
        if [ ! -e /run/opengl-driver/lib/libcuda.so.1 ] && [ -z "''${LD_LIBRARY_PATH:-}" ]; then
          for dir in /usr/lib/x86_64-linux-gnu /usr/lib64 /usr/lib; do
            if [ -e "$dir/libcuda.so.1" ]; then
              mkdir -p "''${XDG_RUNTIME_DIR:-/tmp}/nixrepro-driver"
              ln -sf "$dir"/libcuda.so* "$dir"/libnvidia-*.so* "''${XDG_RUNTIME_DIR:-/tmp}/nixrepro-driver/" 2>/dev/null
              export LD_LIBRARY_PATH="''${XDG_RUNTIME_DIR:-/tmp}/nixrepro-driver"
              break
            fi
          done
        fi
        exec ${env}/bin/python train.py "$@"
      '';
    in {
      packages.${system}.env = env;
      apps.${system}.experiment = nixrepro.lib.mkExperiment {
        inherit pkgs self env nixpkgs;
        command = "${command}";
      };
      devShells.${system}.default = pkgs.mkShell { packages = [ env nixrepro.packages.${system}.default ]; };
    };
}
