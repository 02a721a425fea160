"""How long does ``ravl demo`` take end to end (build, fine-tune, evaluate, discover, mitigate, report)?

Runs the demo command as a user would, in a fresh folder (nothing cached), ``--repeats`` times,
and reports the wall time of the whole command and of each stage (from ``demo.json``), the median
over repeats, and the demo's own before/after numbers. Prints a table and writes JSON.

    python benchmarks/demo_time.py                          # the built-in defaults, once
    python benchmarks/demo_time.py --repeats 3 --out demo_time.json -- --n-train 2000   # extra demo args after --
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--budget-s", type=float, default=300.0, help="the target the README quotes (5 minutes)")
    p.add_argument("--out", default="benchmarks/results/demo_time.json")
    args = p.parse_args(argv)

    runs = []
    for k in range(args.repeats):
        work = Path(tempfile.mkdtemp(prefix="ravl-demo-bench-"))
        cmd = [sys.executable, "-c", "import sys; from ravl.cli import main; sys.exit(main(sys.argv[1:]))",
               "demo", "--out", str(work / "demo"), "--quiet", *extra]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, env={**os.environ, "RAVL_PROGRESS": "0"}, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            print(proc.stdout[-3000:], proc.stderr[-3000:], sep="\n")
            raise SystemExit(f"ravl demo failed with exit code {proc.returncode}")
        d = json.loads((work / "demo" / "demo.json").read_text())
        runs.append({"wall_s": round(wall, 1), "stage_seconds": d.get("stage_seconds", {}),
                     "mitigation": d.get("mitigation"), "discovery": d.get("discovery"),
                     "stdout": proc.stdout})
        shutil.rmtree(work, ignore_errors=True)
        print(f"run {k + 1}/{args.repeats}: {wall:.0f} s", flush=True)

    stages = list(dict.fromkeys(s for r in runs for s in r["stage_seconds"]))
    med = {s: statistics.median(r["stage_seconds"].get(s, 0.0) for r in runs) for s in stages}
    total = statistics.median(r["wall_s"] for r in runs)
    print(f"\nravl demo {' '.join(extra)}  (median of {len(runs)} run(s), {os.cpu_count()} CPUs)")
    print(f"{'stage':<10} {'seconds':>8}")
    for s in stages:
        print(f"{s:<10} {med[s]:>8.1f}")
    print(f"{'total':<10} {total:>8.1f}   (wall time of the command; budget {args.budget_s:.0f} s: "
          f"{'within' if total <= args.budget_s else 'OVER'})")
    m = runs[-1]["mitigation"]
    if m:
        print("\nbefore -> after (last run): " + ", ".join(f"{k} {m['before'][k]:.3f} -> {m['after'][k]:.3f}"
                                                       for k in m["before"]))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"args": extra, "runs": runs, "median_stage_seconds": med, "median_wall_s": total,
                               "budget_s": args.budget_s, "cpus": os.cpu_count()}, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
