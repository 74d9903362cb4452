"""A small, real experiment: logistic regression by gradient descent.

The arithmetic is plain Python, so its results do not depend on the numpy of the environment,
whose version it prints (the demo changes it); seeded; logs metrics through nixrepro.
With a data URI it reads its points from that versioned dataset (recorded in the run), and with
a second one it stores the trained model there as a new version:

    python train.py [DATA_URI [MODEL_URI]]
"""

import json
import math
import random
import sys

import numpy

import nixrepro

print(f"python {sys.executable}, numpy {numpy.__version__} from {numpy.__file__}")
params = nixrepro.params()
lr = float(params.get("lr", 0.5))
epochs = int(params.get("epochs", 30))
rng = random.Random(nixrepro.seed() or 0)

if len(sys.argv) > 1:  # x1,x2,label lines from a versioned dataset
    import nixrepro.data

    rows = nixrepro.data.input(sys.argv[1]).read_text().split()
    data = [((float(x1), float(x2)), int(y)) for x1, x2, y in (row.split(",") for row in rows)]
else:  # two Gaussian blobs in 2-D, labels 0/1
    data = [((rng.gauss(-1, 1), rng.gauss(-1, 1)), 0) for _ in range(200)]
    data += [((rng.gauss(1, 1), rng.gauss(1, 1)), 1) for _ in range(200)]
w, b = [0.0, 0.0], 0.0
for epoch in range(epochs):
    grad_w, grad_b, loss = [0.0, 0.0], 0.0, 0.0
    for (x1, x2), y in data:
        p = 1 / (1 + math.exp(-(w[0] * x1 + w[1] * x2 + b)))
        loss -= y * math.log(p + 1e-12) + (1 - y) * math.log(1 - p + 1e-12)
        grad_w[0] += (p - y) * x1
        grad_w[1] += (p - y) * x2
        grad_b += p - y
    n = len(data)
    w = [w[0] - lr * grad_w[0] / n, w[1] - lr * grad_w[1] / n]
    b -= lr * grad_b / n
    nixrepro.log({"loss": loss / n}, step=epoch)
accuracy = sum((w[0] * x1 + w[1] * x2 + b > 0) == (y == 1) for (x1, x2), y in data) / len(data)
nixrepro.log({"accuracy": accuracy})
print(f"lr={lr} epochs={epochs}: loss {loss / len(data):.4f}, accuracy {accuracy:.3f}")

if len(sys.argv) > 2:  # the model, as a new version of MODEL_URI (written outside the work tree)
    model = nixrepro.run_dir() / "model.json"
    model.write_text(json.dumps({"w": w, "b": b}))
    nixrepro.data.output(model, sys.argv[2])
