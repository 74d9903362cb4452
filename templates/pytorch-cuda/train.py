"""A small PyTorch classifier on generated data; on the GPU when CUDA is available, else the CPU.

    nix run .#experiment -- --lr 0.01 --epochs 20
"""

import argparse

import torch

import nixrepro

parser = argparse.ArgumentParser()
parser.add_argument("--lr", type=float, default=0.01)
parser.add_argument("--epochs", type=int, default=20)
parser.add_argument("--seed", type=int, default=nixrepro.seed() or 0)
args = parser.parse_args()

nixrepro.seed_everything(args.seed)  # random, numpy and torch (deterministic under --deterministic)
if torch.cuda.is_available():
    device = torch.device("cuda")
    print(f"using CUDA: {torch.cuda.get_device_name(0)} (runtime {torch.version.cuda})")
else:
    device = torch.device("cpu")
    print("CUDA is not available: using the CPU")

generator = torch.Generator().manual_seed(args.seed)
negatives = torch.randn(2000, 16, generator=generator) - 1
positives = torch.randn(2000, 16, generator=generator) + 1
x = torch.cat([negatives, positives])
y = torch.cat([torch.zeros(2000), torch.ones(2000)]).long()
x, y = x.to(device), y.to(device)
model = torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.ReLU(), torch.nn.Linear(64, 2)).to(device)
optimizer = torch.optim.SGD(model.parameters(), lr=args.lr)
for epoch in range(args.epochs):
    optimizer.zero_grad()
    loss = torch.nn.functional.cross_entropy(model(x), y)
    loss.backward()
    optimizer.step()
    nixrepro.log({"loss": loss.item()}, step=epoch)
accuracy = (model(x).argmax(dim=1) == y).float().mean().item()
nixrepro.log({"accuracy": accuracy, "cuda": device.type == "cuda"})
print(f"loss {loss.item():.4f}, accuracy {accuracy:.3f} on {device}")
