#!/usr/bin/env python3
"""Turns the JSON lines of `examples/quality` (results.jsonl) into the
markdown tables of docs/QUALITY.md: held-out loss, perplexity, out-of-domain
loss per arm and seed, and "gap recovered" =
(PTQ(control) - arm) / (PTQ(control) - control), where control and
PTQ(control) are the bf16 arm of the same seed evaluated dense and under the
arm's quantization scheme. Prints markdown to stdout.

  python3 scripts/quality_table.py docs/runs/quality-results.jsonl
"""

from __future__ import annotations

import json
import math
import statistics
import sys
from collections import defaultdict


def main(path: str) -> None:
    rows = [json.loads(line) for line in open(path) if line.strip()]
    evals = [r for r in rows if "val_loss" in r]
    control = {}  # (seed, eval recipe) -> row
    for r in evals:
        if r.get("model") == "control":
            control[(r["seed"], r["eval"])] = r
    seeds = sorted({s for s, _ in control})
    print("| model | scheme (eval) | seed | held-out loss | ppl | OOD loss | gap recovered |")
    print("|---|---|---|---|---|---|---|")
    for r in evals:
        if r.get("model") == "base":
            print(f"| base | {r['eval']} | - | {r['val_loss']:.4f} | {r['val_ppl']:.2f} | {r.get('ood_loss', float('nan')):.4f} | |")
    for r in evals:
        if r.get("model") == "control":
            print(f"| control (bf16) | {r['eval']} | {r['seed']} | {r['val_loss']:.4f} | {r['val_ppl']:.2f} | {r.get('ood_loss', float('nan')):.4f} | |")
    recovered = defaultdict(list)
    for r in evals:
        if r.get("model") not in ("qat", "qad"):
            continue
        ptq = control.get((r["seed"], r["eval"]))
        ctl = control.get((r["seed"], "bf16"))
        rec = ""
        if ptq and ctl and ptq["val_loss"] != ctl["val_loss"]:
            g = (ptq["val_loss"] - r["val_loss"]) / (ptq["val_loss"] - ctl["val_loss"])
            recovered[(r["model"], r["eval"])].append(g)
            rec = f"{100 * g:.0f}%"
        print(f"| {r['model']} | {r['eval']} | {r['seed']} | {r['val_loss']:.4f} | {r['val_ppl']:.2f} | {r.get('ood_loss', float('nan')):.4f} | {rec} |")
    print()
    # Gap per scheme vs seed-to-seed spread of the control.
    if len(seeds) >= 2:
        spread = abs(control[(seeds[0], "bf16")]["val_loss"] - control[(seeds[1], "bf16")]["val_loss"])
        print(f"Seed-to-seed spread of the bf16 control (held-out loss): {spread:.4f} nats\n")
        print("| scheme | PTQ gap (mean over seeds) | gap / spread | measurable (>= 5x) | QAT recovered | QAD recovered |")
        print("|---|---|---|---|---|---|")
        schemes = sorted({e for _, e in control if e != "bf16"})
        for e in schemes:
            gaps = [control[(s, e)]["val_loss"] - control[(s, "bf16")]["val_loss"] for s in seeds if (s, e) in control]
            gap = statistics.mean(gaps)
            ratio = gap / spread if spread > 0 else math.inf
            qat = recovered.get(("qat", e))
            qad = recovered.get(("qad", e))
            fmt = lambda v: "-" if not v else " / ".join(f"{100 * x:.0f}%" for x in v)
            print(f"| {e} | {gap:+.4f} | {ratio:.1f} | {'yes' if ratio >= 5 else 'no'} | {fmt(qat)} | {fmt(qad)} |")
    print()
    # QAD whose teacher is the base (the default of runs that do not say):
    # it can at best reach the base, so its recovery is measured against PTQ(base).
    base = {r["eval"]: r for r in evals if r.get("model") == "base"}
    qad_base = [r for r in evals if r.get("model") == "qad" and r.get("teacher", "base") == "base"]
    if qad_base and "bf16" in base:
        print("QAD with the base as teacher, against the base: (PTQ(base) - arm) / (PTQ(base) - base)\n")
        print("| scheme | seed | held-out loss | PTQ(base) | base | recovered |")
        print("|---|---|---|---|---|---|")
        for r in qad_base:
            ptq, b = base[r["eval"]]["val_loss"], base["bf16"]["val_loss"]
            g = (ptq - r["val_loss"]) / (ptq - b)
            print(f"| {r['eval']} | {r['seed']} | {r['val_loss']:.4f} | {ptq:.4f} | {b:.4f} | {100 * g:.0f}% |")
        print()
    for r in rows:
        if "scale_stats" in r:
            print(f"- scale stats {r['model']} {r['scale_stats']} head={r['head']}: "
                  f"{100 * r['subnormal_share']:.1f}% subnormal, {100 * r['zero_share']:.2f}% zero of {r['blocks']} blocks")


if __name__ == "__main__":
    main(sys.argv[1])
