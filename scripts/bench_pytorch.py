"""PyTorch eager, same work as `cargo bench --bench training`: Fashion-MNIST,
the same MLP and CNN, Adam (lr 1e-3), shuffled batches by index, and an
evaluation of the held-out 10% after each epoch. Timed between the ends of
epoch 1 and the last epoch, as Gauntlet's reports are.

    python scripts/bench_pytorch.py --threads 1 --batch 128 --samples 20000 --epochs 3
"""
import argparse
import gzip
import time
import warnings

warnings.filterwarnings("ignore", message="Failed to initialize NumPy")
import torch  # noqa: E402
from torch import nn  # noqa: E402

DATA = "/usr/share/datasets/fashion-mnist"


def load(samples):
    raw = gzip.open(f"{DATA}/train-images-idx3-ubyte.gz").read()[16:]
    labels = gzip.open(f"{DATA}/train-labels-idx1-ubyte.gz").read()[8:]
    x = torch.frombuffer(bytearray(raw), dtype=torch.uint8).view(-1, 784)[:samples].float() / 255.0
    y = torch.frombuffer(bytearray(labels), dtype=torch.uint8)[:samples].long()
    val = int(round(len(y) * 0.1))
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    return x[perm[val:]], y[perm[val:]], x[perm[:val]], y[perm[:val]]


def model(name):
    if name == "mlp":
        return nn.Sequential(nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10))
    return nn.Sequential(
        nn.Unflatten(1, (1, 28, 28)),
        nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(32 * 7 * 7, 128), nn.ReLU(), nn.Linear(128, 10),
    )


def run(name, a, data):
    tx, ty, vx, vy = data
    torch.manual_seed(0)
    net = model(name)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()
    stamps = []
    for _ in range(a.epochs):
        net.train()
        order = torch.randperm(len(ty))
        for start in range(0, len(ty), a.batch):
            idx = order[start:start + a.batch]
            opt.zero_grad()
            loss = loss_fn(net(tx.index_select(0, idx)), ty.index_select(0, idx))
            loss.backward()
            opt.step()
        net.eval()
        correct = 0
        with torch.no_grad():
            for start in range(0, len(vy), 4096):
                logits = net(vx[start:start + 4096])
                correct += int((logits.argmax(1) == vy[start:start + 4096]).sum())
        stamps.append(time.perf_counter())
    rate = len(ty) * (len(stamps) - 1) / (stamps[-1] - stamps[0])
    print(f"{name} {rate:.0f} (threads {a.threads}, batch {a.batch}, {len(ty)} training images, "
          f"val_accuracy {correct / len(vy):.3f})")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--samples", type=int, default=20000)
    p.add_argument("--epochs", type=int, default=3)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    data = load(a.samples)
    for name in ["mlp", "cnn"]:
        run(name, a, data)


if __name__ == "__main__":
    main()
