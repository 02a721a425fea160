"""Speed and fidelity of ravl's discovery clustering against the RaVL reference procedure.

The reference (Varma et al. 2024, released code) builds the full clipped cosine distance matrix
and, for every K in 2C..5C-1, fits scikit-learn-extra's
``KMedoids(metric="precomputed", init="k-medoids++", random_state=seed)`` and scores
``sklearn.metrics.silhouette_score(D, labels, metric="precomputed")``, keeps the best K and refits.
ravl computes the same without the matrix (``ravl.discovery.cluster_regions``).

On the same synthetic region embeddings (C classes, 4 regions per image: one digit, sometimes a
planted spurious feature, the rest "empty"; a model that predicts the spurious class when the
feature is present) this script reports, per size: median wall time of both, the speed ratio,
both chosen K and silhouettes, both clusterings' silhouette and K-Medoids objective *evaluated the
same way* (on the reference's matrix), and whether the top discovered feature agrees (the
reference's scoring steps are ported below). At the large size it runs ravl alone, in a
subprocess, and reports time and peak memory.

scikit-learn-extra is a benchmark-only dependency (its PyPI wheel does not import with numpy 2;
build it: ``pip install cython && pip install --no-build-isolation scikit-learn-extra``). Without
it the reference columns are left empty and ravl's part still runs.

Usage::

    python benchmarks/discovery_speed.py                       # 4,000 and 20,000, then 100,000
    python benchmarks/discovery_speed.py --big-exact           # ... and 100,000 without sampling
    python benchmarks/discovery_speed.py --sizes 4000 --big 0  # quick
    python benchmarks/discovery_speed.py --out benchmarks/results/discovery_speed.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "src") not in sys.path:
    sys.path.insert(0, str(ROOT / "src"))


# ---------------------------------------------------------------------------------------------
# synthetic setting


def make_setting(n_regions: int, *, n_classes: int = 10, dim: int = 512, seed: int = 0, cone: float = 3.0):
    """Region embeddings with a planted spurious feature, and a model biased by it.

    Every image has 4 regions: one digit of its class, the spurious feature with probability 0.5
    in another, "empty" elsewhere. Embeddings = cone * shared direction + 3 * type prototype
    (+ one of 3 writing styles for digits) + noise, so cosine similarities are CLIP-like
    (mostly positive; ``cone=0`` gives many negative ones). The model predicts the spurious class
    (the last) for 95 % of featured images of other classes, is right 92 % of the time otherwise,
    and gets the spurious class right only 10 % of the time without the feature.

    Returns:
        dict with ``embeddings [R, D] float32``, ``region_image``, ``labels``, ``predictions``,
        ``region_probabilities [R, C]``, ``attributes`` (per region), ``classes``, ``spurious``.
    """
    rng = np.random.default_rng(seed)
    n_img = n_regions // 4
    c = n_classes
    s = c - 1
    base = rng.standard_normal(dim)
    base /= np.linalg.norm(base)
    protos = rng.standard_normal((c + 2, dim)) / np.sqrt(dim)  # classes, empty, feature
    styles = rng.standard_normal((c, 3, dim)) / np.sqrt(dim)
    labels = rng.integers(0, c, n_img)
    has_feat = rng.random(n_img) < 0.5
    kinds = np.full((n_img, 4), c, dtype=np.int64)  # c = empty, c + 1 = feature
    pos = np.argsort(rng.random((n_img, 4)), axis=1)
    kinds[np.arange(n_img), pos[:, 0]] = labels
    kinds[has_feat, pos[has_feat, 1]] = c + 1
    kinds = kinds.ravel()
    region_image = np.repeat(np.arange(n_img), 4)
    noise_scale = np.where(kinds < c, 2.0, np.where(kinds == c, 0.4, 0.6)).astype(np.float32)
    style = rng.integers(0, 3, kinds.size)
    emb = np.empty((kinds.size, dim), dtype=np.float32)
    base32, protos32, styles32 = base.astype(np.float32), protos.astype(np.float32), styles.astype(np.float32)
    step = 8192
    for a in range(0, kinds.size, step):  # float32 blocks: the generator stays small next to discover
        kb = kinds[a:a + step]
        blk = cone * base32 + 3.0 * protos32[kb]
        blk += noise_scale[a:a + step, None] * (rng.standard_normal((kb.size, dim), dtype=np.float32)
                                                / np.float32(np.sqrt(dim)))
        dg = kb < c
        blk[dg] += 1.5 * styles32[kb[dg], style[a:a + step][dg]]
        emb[a:a + step] = blk
    digit = kinds < c
    # predictions
    preds = labels.copy()
    u = rng.random(n_img)
    other = (labels + rng.integers(1, c, n_img)) % c
    featured_other = has_feat & (labels != s)
    preds[featured_other & (u < 0.95)] = s
    plain = ~has_feat & (labels != s)
    preds[plain & (u >= 0.92)] = other[plain & (u >= 0.92)]
    nine_plain = ~has_feat & (labels == s)
    preds[nine_plain & (u >= 0.10)] = other[nine_plain & (u >= 0.10)]
    # region scores: digit regions peak at their class, the feature at the spurious class
    logits = rng.normal(0.0, 0.3, (kinds.size, c))
    logits[digit, kinds[digit]] += 5.0
    logits[kinds == c + 1, s] += 6.0
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    classes = [f"class{i}" for i in range(c - 1)] + ["nine"]
    attributes = np.array(classes + ["empty", "red_square"])[kinds]
    return {"embeddings": emb, "region_image": region_image, "labels": labels,
            "predictions": preds, "region_probabilities": probs, "attributes": attributes.tolist(),
            "classes": classes, "spurious": "red_square"}


# ---------------------------------------------------------------------------------------------
# the reference procedure


def have_reference() -> str | None:
    """None if scikit-learn-extra imports, else the reason."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from sklearn_extra.cluster import KMedoids  # noqa: F401
    except Exception as exc:  # broken builds raise ValueError (numpy ABI), not only ImportError
        return f"{type(exc).__name__}: {exc}"
    return None


def reference_matrix(emb: np.ndarray) -> np.ndarray:
    e = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    e = e.astype(np.float32)
    dist = 1.0 - (e @ e.T)
    np.clip(dist, 0, 1, out=dist)
    np.fill_diagonal(dist, 0)
    return dist


def reference_cluster(emb: np.ndarray, ks, seed: int = 0):
    """The reference's ``cluster``: full matrix, KMedoids + silhouette per K, refit the best."""
    from sklearn.metrics import silhouette_score
    from sklearn_extra.cluster import KMedoids

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t0 = time.perf_counter()
        dist = reference_matrix(emb)
        best = (0, 0)
        sils = {}
        for k in ks:
            km = KMedoids(n_clusters=k, random_state=seed, metric="precomputed", init="k-medoids++").fit(dist)
            s = silhouette_score(dist, km.labels_, metric="precomputed")
            sils[int(k)] = float(s)
            if s > best[0]:
                best = (s, k)
        km = KMedoids(n_clusters=best[1], random_state=seed, metric="precomputed", init="k-medoids++").fit(dist)
        elapsed = time.perf_counter() - t0
    return {"labels": km.labels_, "medoids": km.medoid_indices_, "k": int(best[1]), "silhouette": float(best[0]),
            "silhouettes": sils, "seconds": elapsed}, dist


def reference_identify_rank(emb, clusters, medoids, labels, preds, region_image, region_probs):
    """The reference's ``identify`` + ``rank`` (same rules, sets instead of list scans): top cluster."""
    n_img = len(labels)
    img_regs: dict[int, list[int]] = {}
    for r, i in enumerate(region_image.tolist()):
        img_regs.setdefault(i, []).append(r)
    results = []
    for c in sorted(set(clusters.tolist())):
        region_idx = np.where(clusters == c)[0]
        in_imgs = sorted({int(region_image[r]) for r in region_idx})
        in_set = set(in_imgs)
        in_labels = set(labels[in_imgs].tolist())
        out_imgs = [i for i in range(n_img) if labels[i] in in_labels and i not in in_set]
        gaps, table = {}, []
        for lab in in_labels:
            li = [i for i in in_imgs if labels[i] == lab]
            lo = [i for i in out_imgs if labels[i] == lab]
            if not li or not lo:
                continue
            acc_in = float(np.mean(preds[li] == lab))
            acc_out = float(np.mean(preds[lo] == lab))
            w = 2 * min(len(li), len(lo)) / (len(li) + len(lo))
            gaps[lab] = w * (acc_in - acc_out)
            table.append((lab, acc_in - acc_out))
        region_set = set(region_idx.tolist())
        infl: dict[int, list[bool]] = {}
        for i in in_imgs:
            regs = img_regs[i]
            if len(regs) == 1:
                continue
            best = regs[int(np.argmax(region_probs[regs, preds[i]]))]
            if preds[i] != labels[i] and labels[i] in gaps and gaps[labels[i]] < 0:
                infl.setdefault(int(labels[i]), []).append(best in region_set)
        h = max(np.mean(v) for v in infl.values()) if infl else -np.inf
        results.append((c, sum(abs(v) for v in gaps.values()),
                        any(v > 0 for v in gaps.values()) and any(v < 0 for v in gaps.values()), h, table))
    gaps_arr = np.array([r[1] for r in results])
    order = np.argsort(gaps_arr)[::-1]
    kept = [results[a] for a in order if results[a][2] and results[a][3] >= 0.25]
    if not kept:
        return None
    c, g, _, h, table = kept[0]
    members = np.where(clusters == c)[0]
    sims = emb[members] @ emb[medoids[c]]
    ranked = members[np.argsort(sims)[::-1]].tolist()
    attr = max((t for t in table if t[1] > 0), key=lambda t: t[1], default=(None, 0))[0]
    return {"cluster": int(c), "gap": float(g), "influence": float(h), "class_index": attr, "regions": ranked}


def evaluate_same_way(dist: np.ndarray, labels: np.ndarray, medoids: np.ndarray) -> tuple[float, float]:
    """Silhouette and K-Medoids objective on the reference's matrix."""
    from sklearn.metrics import silhouette_score

    sil = float(silhouette_score(dist, labels, metric="precomputed"))
    obj = float(dist[:, medoids].min(axis=1).sum(dtype=np.float64))
    return sil, obj


# ---------------------------------------------------------------------------------------------
# ravl


def ravl_cluster(emb, ks, seed=0, **kw):
    from ravl.discovery import cluster_regions

    t0 = time.perf_counter()
    sw = cluster_regions(emb, ks, random_state=seed, **kw)
    return sw, time.perf_counter() - t0


def ravl_discover(data, seed=0, **kw):
    from ravl.discovery import discover

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t0 = time.perf_counter()
        res = discover(data["embeddings"], data["region_image"], data["labels"], data["predictions"],
                       data["region_probabilities"], classes=data["classes"], random_state=seed, progress=False, **kw)
    return res, time.perf_counter() - t0


def _peak_rss_gib() -> float:
    """Peak resident memory of this process (VmHWM; ru_maxrss survives exec on Linux, so it can
    report the parent's peak)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 2**20
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def _big_child(n: int, dim: int, n_classes: int, seed: int, exact: bool = False) -> None:
    """Subprocess body: discover on n regions; print JSON with time and peak memory."""
    import tracemalloc

    data = make_setting(n, n_classes=n_classes, dim=dim, seed=seed)
    rss_before = _peak_rss_gib()
    tracemalloc.start()
    res, secs = ravl_discover(data, seed=seed, **({"max_exact": None} if exact else {}))
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    from ravl.discovery import precision_at_k

    top = res.top
    print(json.dumps({
        "n_regions": n, "exact": exact, "seconds": secs, "tracemalloc_peak_gib": peak / 2**30,
        "maxrss_gib": _peak_rss_gib(), "maxrss_before_discover_gib": rss_before,
        "input_gib": data["embeddings"].nbytes / 2**30,
        "k": res.n_clusters, "silhouette": res.silhouette, "bounded_memory": res.bounded_memory,
        "top_class": None if top is None else top.class_name,
        "p_at_10": precision_at_k(res.ranked_regions(), data["spurious"], 10, region_attributes=data["attributes"]),
        "timings": res.timings}))


# ---------------------------------------------------------------------------------------------
# main


def run_size(n: int, args, ref_missing: str | None) -> dict:
    data = make_setting(n, n_classes=args.classes, dim=args.dim, seed=args.seed, cone=args.cone)
    c = args.classes
    ks = list(range(2 * c, 5 * c))
    reps = args.repeats if n <= 5000 else 1
    out: dict = {"n_regions": n, "n_images": n // 4, "k_range": [ks[0], ks[-1]], "repeats": reps}
    ravl_times, ref_times = [], []
    ref = dist = sw = None
    for _ in range(reps):  # interleaved, so both see the same machine load
        if ref_missing is None:
            ref, dist = reference_cluster(data["embeddings"], ks, seed=args.seed)
            ref_times.append(ref["seconds"])
            if _ < reps - 1:
                del dist
        sw, t = ravl_cluster(data["embeddings"], ks, seed=args.seed)
        ravl_times.append(t)
    out["ravl_seconds"] = statistics.median(ravl_times)
    out["ravl_seconds_all"] = ravl_times
    out["ravl_k"] = sw.best_k
    out["ravl_silhouette"] = sw.best_silhouette
    out["ravl_negative_similarity"] = sw.negative_similarity
    res, secs = ravl_discover(data, seed=args.seed)
    out["ravl_discover_seconds"] = secs
    top = res.top
    out["ravl_top"] = None if top is None else {"cluster": top.cluster, "class": top.class_name, "gap": top.gap,
                                                "influence": top.influence, "n_regions": top.n_regions}
    from ravl.discovery import precision_at_k

    out["ravl_p_at_10"] = precision_at_k(res.ranked_regions(), data["spurious"], 10,
                                         region_attributes=data["attributes"])
    if ref_missing is not None:
        out["reference"] = f"missing ({ref_missing})"
        return out
    out["reference_seconds"] = statistics.median(ref_times)
    out["reference_seconds_all"] = ref_times
    out["speedup"] = out["reference_seconds"] / out["ravl_seconds"]
    out["reference_k"] = ref["k"]
    out["reference_silhouette"] = ref["silhouette"]
    out["max_abs_silhouette_diff_over_k"] = max(abs(ref["silhouettes"][k] - s)
                                                for k, s in zip(sw.k_values, sw.silhouettes))
    ref_sil, ref_obj = evaluate_same_way(dist, ref["labels"], ref["medoids"])
    ravl_sil, ravl_obj = evaluate_same_way(dist, sw.labels, sw.medoid_indices)
    out.update(reference_eval_silhouette=ref_sil, reference_eval_objective=ref_obj, ravl_eval_silhouette=ravl_sil,
               ravl_eval_objective=ravl_obj, same_labels=bool(np.array_equal(ref["labels"], sw.labels)),
               same_medoids=bool(np.array_equal(ref["medoids"], sw.medoid_indices)))
    del dist
    e = data["embeddings"] / np.linalg.norm(data["embeddings"], axis=1, keepdims=True)
    rtop = reference_identify_rank(e, ref["labels"], ref["medoids"], data["labels"], data["predictions"],
                                   data["region_image"], data["region_probabilities"])
    out["reference_top"] = None if rtop is None else {
        "cluster": rtop["cluster"],
        "class": None if rtop["class_index"] is None else data["classes"][rtop["class_index"]],
        "gap": rtop["gap"], "influence": rtop["influence"], "n_regions": len(rtop["regions"])}
    out["reference_p_at_10"] = None if rtop is None else precision_at_k(
        rtop["regions"], data["spurious"], 10, region_attributes=data["attributes"])
    if rtop is not None and top is not None:
        a, b = set(rtop["regions"]), set(top.region_indices)
        out["top_feature_jaccard"] = len(a & b) / len(a | b)
        out["top_feature_agrees"] = bool(out["reference_top"]["class"] == top.class_name and a == b)
        out["top10_same"] = rtop["regions"][:10] == top.region_indices[:10]
    return out


def _fmt(v, spec=".3f"):
    if v is None:
        return "—"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return format(v, spec)
    return str(v)


def print_table(rows: list[dict], bigs: list[dict] | None) -> None:
    print()
    print("| regions | reference s | ravl s | speed-up | K ref / ravl | silhouette ref / ravl | "
          "objective ref / ravl | same clustering | top feature agrees | P@10 ref / ravl |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['n_regions']:,} | {_fmt(r.get('reference_seconds'), '.2f')} | {_fmt(r['ravl_seconds'], '.2f')} | "
              f"{_fmt(r.get('speedup'), '.1f')}x | {_fmt(r.get('reference_k'))} / {r['ravl_k']} | "
              f"{_fmt(r.get('reference_eval_silhouette'), '.4f')} / "
              f"{_fmt(r.get('ravl_eval_silhouette', r['ravl_silhouette']), '.4f')} | "
              f"{_fmt(r.get('reference_eval_objective'), '.2f')} / {_fmt(r.get('ravl_eval_objective'), '.2f')} | "
              f"{_fmt(r.get('same_labels'))} | {_fmt(r.get('top_feature_agrees'))} | "
              f"{_fmt(r.get('reference_p_at_10'), '.1f')} / {_fmt(r['ravl_p_at_10'], '.1f')} |")
    for big in bigs or []:
        mode = "sample" if big["bounded_memory"] else "exact"
        print(f"| {big['n_regions']:,} ({mode}) | (not run) | {big['seconds']:.2f} | — | — / {big['k']} | — / "
              f"{_fmt(big['silhouette'], '.4f')} | — | — | top: {big['top_class']} | — / {big['p_at_10']:.1f} |")
    for big in bigs or []:
        print(f"\n{big['n_regions']:,} regions ({'bounded-memory sample' if big['bounded_memory'] else 'exact'}): "
              f"{big['seconds']:.1f} s, peak traced memory in discover {big['tracemalloc_peak_gib']:.2f} GiB, "
              f"process max RSS {big['maxrss_gib']:.2f} GiB ({big['maxrss_before_discover_gib']:.2f} GiB before "
              f"discover; inputs {big['input_gib']:.2f} GiB)")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="4000,20000", help="comma-separated region counts run against the reference")
    p.add_argument("--big", type=int, default=100_000, help="region count run with ravl alone (0: skip)")
    p.add_argument("--repeats", type=int, default=3, help="repeats (median) at sizes <= 5,000")
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--cone", type=float, default=3.0, help="shared direction strength (0: many negative similarities)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-reference", action="store_true", help="skip the reference even if installed")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "discovery_speed.json"))
    p.add_argument("--big-exact", action="store_true",
                   help="also run the large size without sampling (max_exact=None)")
    p.add_argument("--_child", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--_exact", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    os.environ.setdefault("RAVL_PROGRESS", "0")
    if args._child:
        _big_child(args._child, args.dim, args.classes, args.seed, args._exact)
        return 0
    ref_missing = "--no-reference" if args.no_reference else have_reference()
    if ref_missing is not None:
        print(f"NOTE: the reference (scikit-learn-extra) is not available: {ref_missing}\n"
              "      Running ravl only. Install it with: pip install cython && "
              "pip install --no-build-isolation scikit-learn-extra", file=sys.stderr)
    rows = []
    for n in [int(s) for s in args.sizes.split(",") if s.strip()]:
        print(f"running {n:,} regions ...", file=sys.stderr, flush=True)
        rows.append(run_size(n, args, ref_missing))
        print(json.dumps(rows[-1], default=str), file=sys.stderr, flush=True)
    bigs = []
    if args.big:
        for exact in ([False, True] if args.big_exact else [False]):
            print(f"running ravl alone on {args.big:,} regions{' (exact)' if exact else ''} (subprocess) ...",
                  file=sys.stderr, flush=True)
            t = time.perf_counter()
            cmd = [sys.executable, __file__, "--_child", str(args.big), "--dim", str(args.dim), "--classes",
                   str(args.classes), "--seed", str(args.seed)] + (["--_exact"] if exact else [])
            cp = subprocess.run(cmd, capture_output=True, text=True, check=True)
            big = json.loads(cp.stdout.strip().splitlines()[-1])
            big["wall_with_data_generation_s"] = time.perf_counter() - t
            bigs.append(big)
    result = {"machine": {"python": platform.python_version(), "platform": platform.platform(),
                          "cpus": os.cpu_count(), "load_average": list(os.getloadavg())},
              "reference": ref_missing or "scikit-learn-extra KMedoids + sklearn silhouette_score",
              "dim": args.dim, "classes": args.classes, "cone": args.cone, "sizes": rows, "big": bigs}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=str) + "\n", encoding="utf-8")
    print_table(rows, bigs)
    print(f"\nwritten {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
