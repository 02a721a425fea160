"""Cross-modal retrieval under object co-occurrence: Recall@k, mAP and ODmAP@k, standard vs decorrelate.

For every co-occurrence strength, builds a two-object setting (A = red_square, B = ring by default;
:func:`ravl.data.cooccurrence.make_cooccurrence_benchmark`), fine-tunes the tiny CLIP on it with the
standard contrastive loss and with the ``decorrelate`` method (A removed / pasted, captions edited),
and measures on the evaluation test split (A and B independent there):

* image->text and text->image Recall@1/5/10 and mAP (``same_text``: the synthetic captions repeat, so
  a caption with the same text as the image's own counts as relevant);
* ODmAP@k (reconstructed, ``any`` and ``own`` relevance) of the test images showing A and B with A
  removed, against the test captions (+ the edited ones), and how many of the top k captions still
  name A (false hits).

Prints a table and writes JSON. Tiny CLIP on CPU; settings and checkpoints are cached under --work
(keyed by method, knobs and epochs), so ``--eval-split val`` (tuning) and ``test`` (reporting)
score the same trained models. ``benchmarks/retrieval_odmap_table.py`` averages seeds.

    python benchmarks/retrieval_odmap.py
    python benchmarks/retrieval_odmap.py --strengths 0 0.5 0.9 --n-train 4000 --epochs 6 --out odmap.json
    python benchmarks/retrieval_odmap.py --eval-split val --strengths 0.9 --methods decorrelate --fraction 1
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--objects", nargs=2, default=["red_square", "ring"], metavar=("A", "B"))
    p.add_argument("--strengths", nargs="+", type=float, default=[0.0, 0.9])
    p.add_argument("--n-train", type=int, default=2000)
    p.add_argument("--n-eval", type=int, default=400)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--k", type=int, default=5, help="ODmAP cut-off")
    p.add_argument("--methods", nargs="+", default=["standard", "decorrelate"], choices=["standard", "decorrelate"])
    p.add_argument("--query-fill", default="ring", choices=["ring", "diffuse"], help="fill of the ODmAP queries")
    p.add_argument("--train-fill", default="ring", choices=["ring", "diffuse"],
                   help="fill of decorrelate's removed pairs (another fill than the queries' tests whether the "
                        "gain survives a change of the removal artefact)")
    p.add_argument("--paste-weight", type=float, default=1.0, help="decorrelate's weight of the pasted pairs")
    p.add_argument("--remove-weight", type=float, default=1.0, help="decorrelate's weight of the removed pairs")
    p.add_argument("--mix", default="joint", choices=["joint", "separate"], help="decorrelate's mix of the pairs")
    p.add_argument("--fraction", type=float, default=0.5, help="decorrelate's fraction of images synthesised a step")
    p.add_argument("--eval-split", default="test", choices=["val", "test"],
                   help="split of the evaluation set measured: tune on val, report test")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--work", default="benchmarks/results/retrieval_odmap")
    p.add_argument("--out", default="benchmarks/results/retrieval_odmap.json")
    args = p.parse_args(argv)

    import numpy as np
    import torch

    torch.set_num_threads(args.threads)

    from ravl.data.cooccurrence import make_cooccurrence_benchmark
    from ravl.data.dataset import load_dataset
    from ravl.data.manipulation import manipulate_dataset
    from ravl.mitigation.methods.decorrelate import DecorrelateConfig, decorrelate_method
    from ravl.mitigation.registry import MitigationContext
    from ravl.models import load_model
    from ravl.retrieval import evaluate_odmap, evaluate_retrieval
    from ravl.training.loop import FinetuneConfig, finetune
    from ravl.utils.io import atomic_write_json

    a, b = args.objects
    knobs = {"fill": args.train_fill, "remove_weight": args.remove_weight, "paste_weight": args.paste_weight,
             "mix": args.mix, "fraction": args.fraction}
    rows = []
    for v in args.strengths:
        work = Path(args.work) / f"{a}_{b}_phi{v}_s{args.seed}"
        s = make_cooccurrence_benchmark(work / "setting", objects=(a, b), strength=v, n_train=args.n_train,
                                        n_eval=args.n_eval, random_state=args.seed)
        train = load_dataset(s.train_dir, split="train")
        test = load_dataset(s.eval_dir, split=args.eval_split)
        both = [r.index for r in test if a in r.region_attributes and b in r.region_attributes]
        qdir = work / f"queries_without_{a}_{args.query_fill}" if args.eval_split == "test" else \
            work / f"queries_without_{a}_{args.query_fill}_{args.eval_split}"
        if not (qdir / "metadata.jsonl").is_file():
            manipulate_dataset(test.subset(indices=both), qdir, object=a, operation="remove", method=args.query_fill,
                               progress=False)
        queries = load_dataset(qdir)
        for method in args.methods:
            t0 = time.monotonic()
            model = load_model("tiny", seed=args.seed, device=args.device)
            cfg = FinetuneConfig(epochs=args.epochs, batch_size=args.batch_size, seed=args.seed, val_split=None)
            objective = None
            if method == "decorrelate":
                ctx = MitigationContext(train=train, labels=np.zeros(len(train), dtype=np.int64),
                                        classes=list(train.classes), templates=("{}",), labelling=None, finetune=cfg,
                                        start="init", region_mode="masked", load_audited=lambda: None)
                objective = decorrelate_method(ctx, DecorrelateConfig(object=a, **knobs)).objective
            run_dir = work / ((method if method == "standard" else
                               f"{method}_{args.mix}_{args.train_fill}_r{args.remove_weight}_p{args.paste_weight}"
                               f"_f{args.fraction}") + ("" if args.epochs == 5 else f"_e{args.epochs}"))
            finetune(model, train, run_dir, cfg, objective=objective, progress=False,
                     init={"model": "tiny", "seed": args.seed, "checkpoint": None},
                     run_info={"method": method, **(knobs if method == "decorrelate" else {})})
            r = evaluate_retrieval(model, test, same_text=True, progress=False)  # captions repeat
            od = {rule: evaluate_odmap(model, queries, test, k=args.k, rule=rule, progress=False)
                  for rule in ("any", "own")}
            rows.append({"strength": v, "achieved": s.achieved, "method": method,
                         "knobs": knobs if method == "decorrelate" else {}, "retrieval": r.to_dict(),
                         "odmap": {k_: o.to_dict() for k_, o in od.items()}, "n_queries": len(queries),
                         "seconds": round(time.monotonic() - t0, 1)})
            print(f"phi {v:.2f} ({s.achieved:.3f}) {method:<12} i2t R@1 {r.image_to_text['recall@1']:.3f} "
                  f"mAP {r.image_to_text['map']:.3f}  t2i R@1 {r.text_to_image['recall@1']:.3f}  "
                  f"ODmAP@{args.k} any {od['any'].value:.3f} own {od['own'].value:.3f}  "
                  f"top-{args.k} naming {a}: {od['any'].false_hits_at_k:.3f}  ({rows[-1]['seconds']} s)", flush=True)

    head = f"{'phi':>5} {'method':<12} {'i2t R@1':>8} {'R@5':>6} {'R@10':>6} {'mAP':>6} {'t2i R@1':>8} {'mAP':>6} " \
           f"{'ODmAP any':>10} {'own':>6} {'false hits':>10}"
    print("\n" + head + "\n" + "-" * len(head))
    for row in rows:
        i2t, t2i = row["retrieval"]["image_to_text"], row["retrieval"]["text_to_image"]
        od = row["odmap"]
        print(f"{row['strength']:>5.2f} {row['method']:<12} {i2t['recall@1']:>8.3f} {i2t['recall@5']:>6.3f} "
              f"{i2t['recall@10']:>6.3f} {i2t['map']:>6.3f} {t2i['recall@1']:>8.3f} {t2i['map']:>6.3f} "
              f"{od['any']['value']:>10.3f} {od['own']['value']:>6.3f} {od['any']['false_hits_at_k']:>10.3f}")
    out = {"benchmark": "retrieval_odmap", "objects": [a, b], "n_train": args.n_train, "n_eval": args.n_eval,
           "epochs": args.epochs, "k": args.k, "query_fill": args.query_fill, "train_fill": args.train_fill,
           "paste_weight": args.paste_weight, "knobs": knobs, "eval_split": args.eval_split, "seed": args.seed,
           "reconstructed": True, "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out, json.loads(json.dumps(out)))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
