#!/usr/bin/env python3
"""Draws the arms' training curves of the quality experiment (docs/QUALITY.md)
as one PNG: the per-step training loss (a 15-step moving average; every arm
sees the same batches in the same order for a seed, so the curves compare
step by step) of the bf16 control, STE QAT and QAD for W4A16 and W4A4 + head,
and the QAD student's KL to its teacher. Needs matplotlib (not a project
dependency: `pip install --target /tmp/mpl matplotlib`, then PYTHONPATH=/tmp/mpl).

  python3 scripts/quality_curves.py docs/runs/quality-curves.jsonl \
      docs/runs/quality-qad-control-curves.jsonl --seed 1 --out docs/quality-arm-curves.png
"""

import argparse
import json
from collections import defaultdict

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def load(paths):
    """run name -> [(step, loss, kl)], the second file's QAD runs renamed by teacher."""
    runs = {}
    for i, path in enumerate(paths):
        these = defaultdict(list)
        for line in open(path):
            v = json.loads(line)
            name = v["run"]
            if name.startswith("qad-"):
                name = name.replace("qad-", "qad(control)-" if i else "qad(base)-", 1)
            these[name].append((v["step"], v["loss"], v.get("kl")))
        # A run in several files (the controls, retrained identically) is drawn once.
        for name, points in these.items():
            runs.setdefault(name, points)
    return runs


def smooth(values, k=15):
    out = []
    for i in range(len(values)):
        window = values[max(0, i - k + 1): i + 1]
        out.append(sum(window) / len(window))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("curves", nargs="+")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    runs = load(args.curves)
    s = f"-s{args.seed}"
    fig, (ax_loss, ax_kl) = plt.subplots(1, 2, figsize=(13, 5))
    for scheme, style in [("w4a16", "-"), ("w4a4+head", "--")]:
        for arm, color in [("qat", "tab:orange"), ("qad(base)", "tab:red"), ("qad(control)", "tab:green")]:
            run = runs.get(f"{arm}-{scheme}{s}")
            if not run:
                continue
            steps = [p[0] for p in run]
            ax_loss.plot(steps, smooth([p[1] for p in run]), style, color=color, label=f"{arm} {scheme}")
            if arm.startswith("qad"):
                ax_kl.plot(steps, [p[2] for p in run], style, color=color, label=f"{arm} {scheme}")
    control = runs.get(f"control{s}")
    if control:
        ax_loss.plot([p[0] for p in control], smooth([p[1] for p in control]), color="tab:blue",
                     label="control (bf16)")
    ax_loss.set(xlabel="step", ylabel="training loss (nats, 15-step mean)",
                title=f"arms on the held-back books, seed {args.seed}")
    ax_kl.set(xlabel="step", ylabel="KL(teacher || student), nats", yscale="log",
              title="QAD: KL to the teacher")
    ax_loss.legend(fontsize=8)
    ax_kl.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)


if __name__ == "__main__":
    main()
