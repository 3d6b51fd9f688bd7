"""The MNIST-1D paper's CNN recipe in plain torch: an independent oracle for ``experiment=mnist1d_baseline``.

A line-by-line re-implementation of the reference repository's ``ConvBase`` and ``train_model`` loop
(github.com/greydanus/mnist1d, ``train.py`` / ``models.py``): three Conv1d of 25 channels (kernels 5/3/3, stride 2,
padding 1, ReLU), Linear(125, 10); Adam lr 1e-2, no weight decay; batches of 100 taken in the dataset's fixed order
(``bix = step * 100 % 4000``, no reshuffling); 6000 steps; test accuracy of the final weights. No Lightning and no
lit_tricks code in the training: the dataset comes straight from ``mnist1d.data.make_dataset(get_dataset_args())``
(only the summary's bootstrap CI is the library's, ``lit_tricks.sweeps.stats.bootstrap_ci``, as in the ablation).

    python benchmarks/mnist1d_reference.py --seeds 10          # one line per seed + mean and bootstrap 95% CI
    python benchmarks/mnist1d_reference.py --seeds 10 --shuffle  # reshuffle every epoch (what the DataModule does)

Writes ``<out>/reference.json`` (default ``outputs/mnist1d_study``); finished seeds are reused.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
# `python benchmarks/mnist1d_reference.py` puts benchmarks/ first on sys.path, where benchmarks/mnist1d.py would
# shadow the mnist1d package.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # lit_tricks from a checkout without installing (the summary's bootstrap CI)


class ConvBase(nn.Module):
    """The reference repository's ConvBase (25 channels, input length 40 -> 5 positions after three stride-2 convs)."""

    def __init__(self, output_size: int = 10, channels: int = 25, linear_in: int = 125) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(1, channels, 5, stride=2, padding=1)
        self.conv2 = nn.Conv1d(channels, channels, 3, stride=2, padding=1)
        self.conv3 = nn.Conv1d(channels, channels, 3, stride=2, padding=1)
        self.linear = nn.Linear(linear_in, output_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.view(-1, 1, x.shape[-1])
        h = self.conv3(self.conv2(self.conv1(x).relu()).relu()).relu()
        return self.linear(h.view(h.shape[0], -1))


def load_dataset() -> dict[str, np.ndarray]:
    from mnist1d.data import get_dataset_args, make_dataset

    return make_dataset(get_dataset_args())


def train_one(data: dict[str, np.ndarray], seed: int, steps: int = 6000, batch_size: int = 100, lr: float = 1e-2,
              shuffle: bool = False) -> dict[str, float]:
    """Final test accuracy and loss of the paper's recipe for one seed (torch.manual_seed(seed) before the model)."""
    torch.manual_seed(seed)
    x_train, x_test = torch.tensor(data["x"], dtype=torch.float32), torch.tensor(data["x_test"], dtype=torch.float32)
    y_train, y_test = torch.tensor(data["y"], dtype=torch.long), torch.tensor(data["y_test"], dtype=torch.long)
    model = ConvBase()
    optimizer = torch.optim.Adam(model.parameters(), lr, weight_decay=0)
    criterion = nn.CrossEntropyLoss()
    n = len(x_train)
    order = torch.arange(n)
    gen = torch.Generator().manual_seed(seed)
    for step in range(steps):
        bix = (step * batch_size) % n
        if shuffle and bix == 0:
            order = torch.randperm(n, generator=gen)
        idx = order[bix:bix + batch_size]
        loss = criterion(model(x_train[idx]), y_train[idx])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        logits = model(x_test)
        return {"acc": float((logits.argmax(-1) == y_test).float().mean()), "loss": float(criterion(logits, y_test))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--steps", type=int, default=6000)
    parser.add_argument("--shuffle", action="store_true", help="reshuffle the training set every epoch")
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "mnist1d_study")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / ("reference" + ("_shuffle" if args.shuffle else "") + ".json")
    done: dict[str, float] = json.loads(path.read_text()) if path.is_file() else {}
    data = load_dataset()
    for seed in range(args.seeds):
        key = f"{seed}:{args.steps}"
        if key not in done:
            t0 = time.perf_counter()
            done[key] = train_one(data, seed, steps=args.steps, shuffle=args.shuffle)["acc"]
            path.write_text(json.dumps(done, indent=1))
            print(f"seed {seed}: test acc {done[key]:.4f} ({time.perf_counter() - t0:.0f} s)", flush=True)
    from lit_tricks.sweeps.stats import bootstrap_ci

    accs = [done[f"{s}:{args.steps}"] for s in range(args.seeds)]
    lo, hi = bootstrap_ci(accs)
    print(f"plain-torch paper recipe ({args.steps} steps, shuffle={args.shuffle}), seeds 0-{args.seeds - 1}: "
          f"mean {np.mean(accs):.2%}, 95% CI [{lo:.2%}, {hi:.2%}]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
