"""Mean and 95% CI over seeds of ``retrieval_odmap.py`` results, and the must-show check.

Reads the JSON files ``retrieval_odmap.py --out`` wrote (one per seed; several per seed are merged,
e.g. a standard and a decorrelate run), prints a markdown table (mean ± half-width of the 95%
Student-t interval over seeds) and, when phi 0 standard, the highest phi standard and that phi's
decorrelate are all there, the must-show of issue 15: the ODmAP@k loss the planted co-occurrence
causes (phi 0 standard - phi standard), the fraction of it decorrelate recovers, and its Recall@5
change against the standard model fine-tuned with the co-occurrence.

    python benchmarks/retrieval_odmap_table.py benchmarks/results/retrieval_odmap_test_s*.json
"""

from __future__ import annotations

import argparse
import json
import math
from collections import defaultdict

# two-sided 95% Student-t quantiles by degrees of freedom
_T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228}

METRICS = (("i2t R@1", ("retrieval", "image_to_text", "recall@1")),
           ("i2t R@5", ("retrieval", "image_to_text", "recall@5")),
           ("i2t mAP", ("retrieval", "image_to_text", "map")),
           ("t2i R@5", ("retrieval", "text_to_image", "recall@5")),
           ("ODmAP@k any", ("odmap", "any", "value")),
           ("false hits@k", ("odmap", "any", "false_hits_at_k")),
           ("ODmAP@k own", ("odmap", "own", "value")))


def _get(row, path):
    for key in path:
        row = row[key]
    return float(row)


def mean_ci(values: list[float]) -> tuple[float, float]:
    """Mean and the half-width of its two-sided 95% Student-t interval (NaN for one value)."""
    n = len(values)
    m = sum(values) / n
    if n < 2:
        return m, float("nan")
    sd = math.sqrt(sum((v - m) ** 2 for v in values) / (n - 1))
    return m, _T95.get(n - 1, 1.96) * sd / math.sqrt(n)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("files", nargs="+")
    args = p.parse_args(argv)
    cells: dict[tuple[float, str], dict[int, dict]] = defaultdict(dict)
    ks = set()
    for f in args.files:
        d = json.load(open(f, encoding="utf-8"))
        ks.add(d["k"])
        for row in d["rows"]:
            cells[(row["strength"], row["method"])][d["seed"]] = row
    print(f"| phi | method | seeds | {' | '.join(m for m, _ in METRICS)} |")
    print("|---|---|---|" + "---|" * len(METRICS))
    for (phi, method), by_seed in sorted(cells.items()):
        vals = []
        for _, path in METRICS:
            m, h = mean_ci([_get(r, path) for r in by_seed.values()])
            vals.append(f"{m:.3f} ± {h:.3f}")
        print(f"| {phi:g} | {method} | {','.join(map(str, sorted(by_seed)))} | {' | '.join(vals)} |")
    high = max((phi for phi, _ in cells), default=0.0)
    need = [(0.0, "standard"), (high, "standard"), (high, "decorrelate")]
    if high > 0 and all(c in cells for c in need):
        seeds = sorted(set.intersection(*(set(cells[c]) for c in need)))
        od = {c: [_get(cells[c][s], ("odmap", "any", "value")) for s in seeds] for c in need}
        r5 = {c: [_get(cells[c][s], ("retrieval", "image_to_text", "recall@5")) for s in seeds] for c in need}
        loss = [a - b for a, b in zip(od[need[0]], od[need[1]])]
        gain = [a - b for a, b in zip(od[need[2]], od[need[1]])]
        dr5 = [a - b for a, b in zip(r5[need[2]], r5[need[1]])]
        ml, mg = mean_ci(loss), mean_ci(gain)
        frac = mg[0] / ml[0] if ml[0] > 0 else float("nan")
        k = ks.pop() if len(ks) == 1 else "k"
        print(f"\nseeds {seeds}; ODmAP@{k} (any) loss from the co-occurrence (phi 0 - phi {high:g}, standard): "
              f"{ml[0]:.3f} ± {ml[1]:.3f}; recovered by decorrelate: {mg[0]:.3f} ± {mg[1]:.3f} "
              f"({frac:.0%} of the loss); Recall@5 change: {mean_ci(dr5)[0]:+.3f} ± {mean_ci(dr5)[1]:.3f}")
        print("per seed: loss " + " ".join(f"{v:.3f}" for v in loss) + "; recovered " +
              " ".join(f"{v:.3f}" for v in gain) + "; R@5 change " + " ".join(f"{v:+.3f}" for v in dr5))
        ok = ml[0] > 0 and frac >= 0.5 and mean_ci(dr5)[0] >= -0.02
        print(f"must-show (loss > 0, recovered >= half, R@5 not lower by more than 0.02, on the means): "
              f"{'met' if ok else 'NOT met'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
