"""Exports a PyTorch classifier as TorchScript for `model.kind = "torchscript"`.

    scripts/export-torchscript --arch cnn --out configs/models/fashion-cnn.pt

Any nn.Module works the same way: define it, `torch.jit.script(model)`,
`.save(path)`. Its forward takes a float batch ([N, features], or
[N, C, H, W] with `model.input = "image"`) and returns [N, classes] logits.
Gauntlet trains it with its own optimizers, from the weights saved here.
"""
import argparse
import warnings

warnings.filterwarnings("ignore", message="Failed to initialize NumPy")  # torch without numpy: fine here
import torch  # noqa: E402
from torch import nn  # noqa: E402


class Mlp(nn.Module):
    def __init__(self, features: int, hidden: int, classes: int, dropout: float):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(features, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Cnn(nn.Module):
    def __init__(self, channels: int, side: int, classes: int, dropout: float):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(channels, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
        )
        flat = 32 * (side // 4) * (side // 4)
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(dropout), nn.Linear(flat, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", choices=["mlp", "cnn"], default="mlp")
    p.add_argument("--features", type=int, default=784, help="mlp: inputs per sample")
    p.add_argument("--hidden", type=int, default=128, help="mlp: hidden units")
    p.add_argument("--channels", type=int, default=1, help="cnn: input channels")
    p.add_argument("--side", type=int, default=28, help="cnn: image height and width")
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--dropout", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0, help="seeds the initial weights")
    p.add_argument("--out", required=True, help="the .pt file to write")
    a = p.parse_args()
    torch.manual_seed(a.seed)
    if a.arch == "mlp":
        model = Mlp(a.features, a.hidden, a.classes, a.dropout)
    else:
        model = Cnn(a.channels, a.side, a.classes, a.dropout)
    torch.jit.script(model).save(a.out)
    print(f"wrote {a.out}: {a.arch}, {sum(t.numel() for t in model.parameters())} parameters")


if __name__ == "__main__":
    main()
