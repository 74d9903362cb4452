"""Logistic regression with numpy on generated data: seeded, every metric logged through nixrepro.

    nix run .#experiment -- --lr 0.1 --epochs 200
"""

import argparse

import numpy as np

import nixrepro

parser = argparse.ArgumentParser()
parser.add_argument("--lr", type=float, default=0.5)
parser.add_argument("--epochs", type=int, default=100)
parser.add_argument("--seed", type=int, default=nixrepro.seed() or 0)
args = parser.parse_args()

rng = np.random.default_rng(args.seed)
n = 500
x = np.vstack([rng.normal(-1.0, 1.0, (n, 2)), rng.normal(1.0, 1.0, (n, 2))])
y = np.concatenate([np.zeros(n), np.ones(n)])
w, b = np.zeros(2), 0.0
for epoch in range(args.epochs):
    p = 1.0 / (1.0 + np.exp(-(x @ w + b)))
    loss = -np.mean(y * np.log(p + 1e-12) + (1 - y) * np.log(1 - p + 1e-12))
    w -= args.lr * (x.T @ (p - y)) / len(y)
    b -= args.lr * float(np.mean(p - y))
    if epoch % 10 == 0 or epoch == args.epochs - 1:
        nixrepro.log({"loss": float(loss)}, step=epoch)
accuracy = float(np.mean((x @ w + b > 0) == (y == 1)))
nixrepro.log({"accuracy": accuracy})
print(f"lr={args.lr} epochs={args.epochs} seed={args.seed}: loss {loss:.4f}, accuracy {accuracy:.3f}")
