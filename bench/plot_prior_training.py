"""Plot the embedded prior's training curves (loss, validation PSNR / LPIPS against bicubic).

    python bench/plot_prior_training.py [--logs docs/embedded_prior] [--out docs/embedded_prior/training_curves.png]

Reads ``train_log.csv`` and ``val_log.csv`` as written by ``vsdsr-train-prior`` (concatenated over chained runs, with
a ``run`` column) and writes one PNG with three panels. Needs matplotlib (a nerfstudio dependency).
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path
from typing import Dict, List


def read_csv(path: Path) -> List[Dict[str, str]]:
    """Rows of a CSV file as dicts."""
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def moving_average(values: List[float], window: int) -> List[float]:
    """Trailing moving average (shorter windows at the start)."""
    out, acc = [], 0.0
    for i, v in enumerate(values):
        acc += v
        if i >= window:
            acc -= values[i - window]
        out.append(acc / min(i + 1, window))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--logs", type=Path, default=Path("docs/embedded_prior"), help="folder with the two CSVs")
    parser.add_argument("--out", type=Path, default=None, help="PNG to write (default: LOGS/training_curves.png)")
    args = parser.parse_args()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = read_csv(args.logs / "train_log.csv")
    val = read_csv(args.logs / "val_log.csv")
    steps = [int(r["step"]) for r in train]
    loss = [float(r["loss"]) for r in train]
    vsteps = [int(r["step"]) for r in val]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    axes[0].plot(steps, loss, lw=0.6, alpha=0.4, label="loss (every 50 steps)")
    axes[0].plot(steps, moving_average(loss, 10), lw=1.5, label="moving average (500 steps)")
    axes[0].set(xlabel="optimiser step (batch 128)", ylabel="v-prediction MSE", yscale="log", title="training loss")
    for name, ax, better in (("psnr", axes[1], "higher"), ("lpips", axes[2], "lower")):
        ax.plot(vsteps, [float(r[name]) for r in val], "o-", label="prior, DDIM 20 steps")
        ax.axhline(float(val[0][f"{name}_bicubic"]), color="k", ls="--", label="bicubic")
        ax.set(xlabel="optimiser step", ylabel=name.upper(), title=f"validation {name.upper()} ({better} is better)")
    run_starts = [int(r["step"]) for i, r in enumerate(train) if i and r["run"] != train[i - 1]["run"]]
    for ax in axes:
        for s in run_starts:
            ax.axvline(s, color="grey", lw=0.8, ls=":")
        ax.legend(fontsize=8)
    fig.suptitle("Embedded x4 prior: three chained <=10-minute H100 runs (dotted lines: run boundaries)", fontsize=10)
    fig.tight_layout()
    out = args.out or args.logs / "training_curves.png"
    fig.savefig(out, dpi=90)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
