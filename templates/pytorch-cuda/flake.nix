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
        overlays = [
          (final: prev: {
            # The CUDA release torch and every CUDA library are built against: nixpkgs' default.
            # A driver whose `nvidia-smi` shows an older "CUDA Version" of the same major runs it
            # under NVIDIA's minor version compatibility (nixrepro records it and warns). To build
            # for that driver instead, name its release here, e.g. for "CUDA Version: 12.2":
            #   cudaPackages = prev.cudaPackages_12_2;
            cudaPackages = prev.cudaPackages;
          })
        ];
      };
      env = pkgs.python3.withPackages (ps: [ ps.torch ps.numpy (nixrepro.lib.pythonPackage ps) ]);
    in {
      packages.${system}.env = env;
      apps.${system}.experiment = nixrepro.lib.mkExperiment {
        inherit pkgs self env nixpkgs;
        command = "${env}/bin/python ${self}/train.py"; # the flake's copy: the recorded commit runs
        # The NVIDIA driver (libcuda.so) cannot be pinned: it must match the host's kernel module.
        # On NixOS it is in /run/opengl-driver/lib, which nixpkgs' CUDA packages find through
        # their runpath. Elsewhere, hostDriver links only the host's driver libraries (libcuda,
        # libnvidia-*) into a private directory and puts that on LD_LIBRARY_PATH before nixrepro
        # starts, so the record names the libcuda the run loads and its sha256. Never put the
        # host's library directory itself (e.g. /usr/lib/x86_64-linux-gnu) on LD_LIBRARY_PATH: it
        # holds the host's libc, and Nix-built programs break on it.
        hostDriver = true;
      };
      devShells.${system}.default = pkgs.mkShell { packages = [ env nixrepro.packages.${system}.default ]; };
    };
}
