{
  description = "An ML experiment whose runs nixrepro records with the identity of their environment";

  inputs = {
    nixpkgs.url = "github:NixOS/nixpkgs/nixos-25.05";
    nixrepro.url = "github:nixrepro/nixrepro";
    nixrepro.inputs.nixpkgs.follows = "nixpkgs"; # one nixpkgs for the env and the recorder
  };

  outputs = { self, nixpkgs, nixrepro }:
    let
      system = "x86_64-linux"; # or aarch64-linux
      pkgs = nixpkgs.legacyPackages.${system};
      # Everything the experiment imports, pinned by flake.lock: this is what nixrepro records.
      env = pkgs.python3.withPackages (ps: [ ps.numpy (nixrepro.lib.pythonPackage ps) ]);
    in {
      packages.${system}.env = env;

      # `nix run .#experiment -- --lr 0.1`: build the env, check the build against the checkout,
      # run train.py in it and record the run. train.py is the flake's own copy (${self}), so the
      # code that runs is the recorded commit, also for `nix run github:you/repo#experiment`.
      apps.${system}.experiment = nixrepro.lib.mkExperiment {
        inherit pkgs self env nixpkgs;
        command = "${env}/bin/python ${self}/train.py";
      };

      devShells.${system}.default = pkgs.mkShell {
        packages = [ env nixrepro.packages.${system}.default ];
      };
    };
}
