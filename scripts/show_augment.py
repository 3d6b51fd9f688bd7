"""Write a PNG grid of augmented samples for a conf/augment preset: each row one image, first column unaugmented.

    python scripts/show_augment.py digits --out docs/img/augment_digits.png
    python scripts/show_augment.py cifar_strong --size 32 --rgb --out docs/img/augment_cifar_strong.png

Images are scikit-learn's embedded 8x8 digits (no download); ``--size`` upsamples them, ``--rgb`` tints them on a
colored background so color jitter / grayscale show.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from hydra.utils import instantiate

from lit_tricks.config_bases import load_preset

CONF = Path(__file__).resolve().parents[1] / "conf" / "augment"


def load_pipeline(name: str) -> Any:
    """The per-sample pipeline of ``conf/augment/<name>.yaml`` (None for ``none``)."""
    path = CONF / f"{name}.yaml"
    if not path.is_file():
        raise SystemExit(f"unknown preset {name!r}; valid: {sorted(p.stem for p in CONF.glob('*.yaml'))}")
    node = load_preset("augment", name).get("augment")
    return instantiate(node) if node is not None and "_target_" in node else None


def sample_images(n: int, size: int, rgb: bool, seed: int = 0) -> torch.Tensor:
    """``(n, C, size, size)`` float images in [0, 1] from the embedded digits."""
    from sklearn.datasets import load_digits

    digits = torch.as_tensor(load_digits().images[:n], dtype=torch.float32).unsqueeze(1) / 16.0
    if size != 8:
        digits = F.interpolate(digits, size=(size, size), mode="bilinear", align_corners=False).clamp(0, 1)
    if not rgb:
        return digits
    g = torch.Generator().manual_seed(seed)
    fg, bg = torch.rand(n, 3, 1, 1, generator=g), torch.rand(n, 3, 1, 1, generator=g) * 0.5
    ramp = torch.linspace(0.6, 1.0, size).view(1, 1, 1, size)
    return (digits * fg + (1 - digits) * bg * ramp).clamp(0, 1)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("name", help="conf/augment preset")
    parser.add_argument("--rows", type=int, default=4)
    parser.add_argument("--draws", type=int, default=7, help="augmented copies per image")
    parser.add_argument("--size", type=int, default=8)
    parser.add_argument("--rgb", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("augment.png"))
    args = parser.parse_args(argv)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pipe = load_pipeline(args.name)
    images = sample_images(args.rows, args.size, args.rgb, args.seed)
    fig, axes = plt.subplots(args.rows, args.draws + 1, figsize=(1.1 * (args.draws + 1), 1.1 * args.rows),
                             squeeze=False)
    for r in range(args.rows):
        for c in range(args.draws + 1):
            x = images[r]
            if c > 0 and pipe is not None:
                torch.manual_seed(args.seed * 1000 + r * 100 + c)
                x = pipe(x)
            img = x.permute(1, 2, 0).numpy()
            axes[r, c].imshow(img.squeeze(-1) if img.shape[-1] == 1 else img, cmap="gray", vmin=0, vmax=1)
            axes[r, c].axis("off")
    axes[0, 0].set_title("original", fontsize=8)
    fig.suptitle(f"augment={args.name}", fontsize=9)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    plt.close(fig)
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
