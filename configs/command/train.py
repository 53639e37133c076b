#!/usr/bin/env python3
"""A trial program for `model.kind = "command"`: plain Python, no packages.

Gauntlet runs it once per trial (and again after a crash):
  * parameters arrive as `--name value` arguments and as a JSON file named
    by GAUNTLET_PARAMS;
  * GAUNTLET_CHECKPOINT_DIR is empty on a fresh start and holds the last
    checkpoint on a restart;
  * each epoch: save the checkpoint first, then print one JSON object on
    stdout, e.g. {"epoch": 3, "val_accuracy": 0.87}; anything else printed
    goes to the trial's output.log;
  * exit 0 when done; SIGTERM means stop now (pruned or shutting down).

It fits softmax regression to a synthetic three-class problem.
"""
import argparse
import json
import math
import os
import random

p = argparse.ArgumentParser()
p.add_argument("--lr", type=float, required=True)
p.add_argument("--l2", type=float, default=0.0)
p.add_argument("--batch_size", type=int, default=32)
a = p.parse_args()

max_epochs = int(os.environ.get("GAUNTLET_MAX_EPOCHS", "10"))
ckpt_dir = os.environ.get("GAUNTLET_CHECKPOINT_DIR", ".")
state_file = os.path.join(ckpt_dir, "state.json")

# The data: fixed, so every trial sees the same problem.
rng = random.Random(7)
centers = [(1.5, 0.0), (-1.0, 1.2), (-0.5, -1.4)]
samples = [([c[0] + rng.gauss(0, 1), c[1] + rng.gauss(0, 1)], k) for k, c in enumerate(centers) for _ in range(300)]
rng.shuffle(samples)
train, val = samples[:720], samples[720:]

if os.path.exists(state_file):
    with open(state_file) as f:
        state = json.load(f)
    print(f"resuming after epoch {state['epoch']}")
else:
    state = {"epoch": 0, "w": [[0.0, 0.0, 0.0] for _ in range(3)]}


def scores(w, x):
    z = [w[k][0] * x[0] + w[k][1] * x[1] + w[k][2] for k in range(3)]
    m = max(z)
    e = [math.exp(v - m) for v in z]
    s = sum(e)
    return [v / s for v in e]


order = random.Random(int(os.environ.get("GAUNTLET_SEED", "0")))
for epoch in range(state["epoch"] + 1, max_epochs + 1):
    w = state["w"]
    order.shuffle(train)
    for start in range(0, len(train), a.batch_size):
        grad = [[0.0, 0.0, 0.0] for _ in range(3)]
        batch = train[start:start + a.batch_size]
        for x, y in batch:
            probs = scores(w, x)
            for k in range(3):
                g = probs[k] - (1.0 if k == y else 0.0)
                grad[k][0] += g * x[0]
                grad[k][1] += g * x[1]
                grad[k][2] += g
        for k in range(3):
            for j in range(3):
                w[k][j] -= a.lr * (grad[k][j] / len(batch) + a.l2 * w[k][j])
    loss = -sum(math.log(max(scores(w, x)[y], 1e-12)) for x, y in val) / len(val)
    acc = sum(max(range(3), key=lambda k: scores(w, x)[k]) == y for x, y in val) / len(val)
    state = {"epoch": epoch, "w": w}
    tmp = state_file + ".tmp"
    with open(tmp, "w") as f:
        json.dump(state, f)
    os.replace(tmp, state_file)  # the checkpoint first, atomically...
    print(json.dumps({"epoch": epoch, "val_accuracy": acc, "val_loss": loss}), flush=True)  # ...then the report
