"""Does fine-tuning learn the planted shortcut? Features x strengths, tiny CLIP on CPU.

For every feature and Cramér's V, builds a setting, fine-tunes the tiny CLIP with the standard
contrastive loss, and measures on the evaluation test split (feature independent of class) the
spurious class's zero-shot accuracy with vs without the feature. Prints a table and writes JSON.

    python benchmarks/shortcut_learning.py                       # red_square, ring, stripes x V in {0, 0.95}
    python benchmarks/shortcut_learning.py --features red_square --strengths 0 0.9 0.99 --out shortcut.json

Settings and checkpoints are cached under --work, so an interrupted run resumes.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--features", nargs="+", default=["red_square", "ring", "stripes"])
    p.add_argument("--strengths", nargs="+", type=float, default=[0.0, 0.95])
    p.add_argument("--spurious-class", default="nine")
    p.add_argument("--n-train", type=int, default=10000)
    p.add_argument("--n-eval", type=int, default=2000)
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work", default="benchmarks/results/shortcut")
    p.add_argument("--out", default="benchmarks/results/shortcut_learning.json")
    args = p.parse_args(argv)

    from ravl.data.dataset import load_dataset
    from ravl.data.synthetic import CAPTION_TEMPLATES, make_spurious_benchmark
    from ravl.evaluation.metrics import check_setting_validity, evaluate
    from ravl.models import load_model
    from ravl.training.loop import FinetuneConfig, finetune
    from ravl.utils.io import atomic_write_json

    rows = []
    for feat in args.features:
        for v in args.strengths:
            t0 = time.monotonic()
            work = Path(args.work) / f"{feat}_v{v}_s{args.seed}"
            s = make_spurious_benchmark(work / "setting", spurious_class=args.spurious_class, feature=feat,
                                        cramers_v=v, n_train=args.n_train, n_eval=args.n_eval,
                                        random_state=args.seed)
            model = load_model("tiny", seed=args.seed)
            fr = finetune(model, load_dataset(s.train_dir), work / "model",
                          FinetuneConfig(epochs=args.epochs, seed=args.seed),
                          init={"model": "tiny", "seed": args.seed, "checkpoint": None})
            ev = load_dataset(s.eval_dir)
            res = {}
            for split in ("val", "test"):
                r = evaluate(model, ev, split=split, templates=CAPTION_TEMPLATES, spurious_feature=feat, regions=False)
                res[split] = r
            val = check_setting_validity(res["val"], s.spurious_class)
            test = res["test"].image
            w, wo = test.group(s.spurious_class, True), test.group(s.spurious_class, False)
            rows.append({"feature": feat, "target_v": v, "achieved_v": s.achieved_v,
                         "test_overall": test.overall, "test_worst_group": test.worst_group.accuracy,
                         "spurious_acc_with": w.accuracy, "spurious_acc_without": wo.accuracy,
                         "spurious_gap": w.accuracy - wo.accuracy, "n_with": w.n, "n_without": wo.n,
                         "val_gap": val.gap, "valid": val.valid,
                         "train_images_per_s": fr.history[-1]["images_per_s"],
                         "seconds": round(time.monotonic() - t0, 1)})
            print(json.dumps(rows[-1]), flush=True)
    hdr = f"{'feature':<11} {'V':>5} {'V got':>6} {'acc with':>9} {'without':>8} {'gap':>7} {'overall':>8} {'worst':>6} valid"
    print("\n" + hdr + "\n" + "-" * len(hdr))
    for r in rows:
        print(f"{r['feature']:<11} {r['target_v']:>5} {r['achieved_v']:>6.3f} {r['spurious_acc_with']:>9.3f} "
              f"{r['spurious_acc_without']:>8.3f} {r['spurious_gap']:>+7.3f} {r['test_overall']:>8.3f} "
              f"{r['test_worst_group']:>6.3f} {r['valid']}")
    atomic_write_json(args.out, {"args": vars(args), "rows": rows})
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
