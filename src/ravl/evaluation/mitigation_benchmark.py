"""The mitigation benchmark: Stage 1 then every mitigation method on a grid of controlled settings.

For each setting (feature x spurious class x Cramér's V x seed) the runner

1. builds the data (:func:`ravl.make_spurious_benchmark`) and fine-tunes the tiny CLIP with the
   standard contrastive loss from its seeded initialisation (the *audited* model);
2. applies the validity rule on the evaluation ``val`` split and runs RaVL discovery there
   (``discovery.json``), scoring Precision@10 of the top feature against the planted
   ``region_attributes``;
3. runs every requested mitigation method with :func:`ravl.mitigation.api.mitigate` (regions
   labelled by the audited model and the discovery, fine-tuned again from the same
   initialisation and recipe, or continued from the audited weights for ``ravl-continue``), and
4. evaluates each resulting model zero-shot on the evaluation ``test`` split: Image Overall,
   Image Worst-Group, Region Overall, Region Worst-Group (method.md §4).

Groups for the baselines and the spurious regions for RaVL come from the **discovered** feature;
the planted ground truth is read only to score (P@10, metrics, labelling precision/recall).

Work folder layout::

    OUT/benchmark_config.json       the MitigationBenchmarkConfig (a folder holds one config)
    OUT/results.jsonl               one row per (setting, method): deterministic values only,
                                    rewritten in grid order x method order when a run ends
    OUT/timings.jsonl               wall-clock seconds per (setting, method), append-only
    OUT/<setting>/setting/          the data
    OUT/<setting>/model/            the audited checkpoint (standard fine-tuning from init)
    OUT/<setting>/discovery/        discovery.json, validity.json
    OUT/<setting>/<method>/         the mitigated checkpoint, mitigation.json, evaluation.json

Every step is cached and every training run is resumable, so an interrupted benchmark resumes
where it stopped; a finished (setting, method) row is never recomputed. Settings run serially or
as Ray tasks (:mod:`ravl.evaluation.backends`) with identical results.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


from ravl.evaluation.benchmark import (
    SettingSpec,
    _append_jsonl,
    _file_lock,
    _mean_ci,
    _read_rows,
    _strict_from_dict,
    _thread_limits,
    grid,
)
from ravl.evaluation.metrics import SUMMARY_METRICS
from ravl.utils.validation import check_choice, check_float, check_int

__all__ = ["MITIGATION_BENCHMARK_METHODS", "MitigationBenchmarkConfig", "run_mitigation_setting",
           "run_mitigation_grid", "summarize_mitigation", "format_mitigation_summary", "grid"]

logger = logging.getLogger(__name__)

#: Benchmark method names: the :data:`ravl.mitigation.api.METHODS` (from the original
#: initialisation) plus ``ravl-continue`` (RaVL continued from the audited weights).
MITIGATION_BENCHMARK_METHODS = ("standard", "upsample", "vl-erm", "vl-gdro", "spurious-aware", "cfr", "ravl",
                                "ravl-continue")

#: Row fields that go to ``timings.jsonl`` instead of ``results.jsonl``.
TIMING_FIELDS = ("method_seconds", "setup_seconds")


@dataclass(frozen=True)
class MitigationBenchmarkConfig:
    """Sizes, recipe and mitigation options shared by every setting of a mitigation grid.

    Attributes:
        n_train: Fine-tuning images per setting (5 % of them validation).
        n_eval: Evaluation images (half val: discovery and validity; half test: the metrics).
        epochs: Epochs of the original fine-tuning, and of every method started from init.
        continue_epochs: Epochs of ``ravl-continue`` (from the audited weights).
        batch_size: Fine-tuning batch size.
        source: Digit source of :func:`ravl.make_spurious_benchmark`.
        min_gap: Validity rule threshold (spurious-class accuracy gap on eval val).
        k: Precision@k cut-off of the discovery score.
        region_mode: Region embedding mode of discovery, labelling and the RaVL loss.
        features: Discovered features treated as spurious: ``"class"`` (every feature tied to
            the top feature's class), ``"top"``, ``"all"`` or ranks like ``"1,2"``.
        min_gap_ratio: See :class:`ravl.mitigation.api.MitigationOptions`.
        assignment_quantile: See :class:`ravl.mitigation.api.MitigationOptions`.
        lam: λ of the RaVL loss.
        eta: Group DRO step size.
        spurious_names: Spurious-Aware's attribute names (empty: its L_ls is off; discovery does
            not name the feature, so by default none is given).
        threads: Torch / BLAS / OpenMP threads inside each setting (fixed, so results do not
            depend on the process or backend).
    """

    n_train: int = 6000
    n_eval: int = 2000
    epochs: int = 4
    continue_epochs: int = 2
    batch_size: int = 128
    source: str = "sklearn"
    min_gap: float = 0.1
    k: int = 10
    region_mode: str = "masked"
    features: str = "class"
    min_gap_ratio: float = 0.5
    assignment_quantile: float | None = 0.05
    lam: float = 1.0
    eta: float = 0.01
    spurious_names: tuple[str, ...] = ()
    threads: int = 2

    def __post_init__(self) -> None:
        c = "MitigationBenchmarkConfig"
        for name, low in (("n_train", 20), ("n_eval", 20), ("epochs", 1), ("continue_epochs", 1), ("batch_size", 2),
                          ("k", 1), ("threads", 1)):
            check_int(getattr(self, name), name, c, low=low)
        check_float(self.min_gap, "min_gap", c, low=-1, high=1)
        check_float(self.min_gap_ratio, "min_gap_ratio", c, low=0, high=1)
        if self.assignment_quantile is not None:
            check_float(self.assignment_quantile, "assignment_quantile", c, low=0, high=1)
        check_float(self.lam, "lam", c, low=0)
        check_float(self.eta, "eta", c, low=0)
        from ravl.models.regions import REGION_MODES

        check_choice(self.region_mode, "region_mode", c, REGION_MODES)
        object.__setattr__(self, "spurious_names", tuple(self.spurious_names))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (``benchmark_config.json``)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> MitigationBenchmarkConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error."""
        return _strict_from_dict(cls, d)


def _features_option(text: str):
    t = str(text).strip().lower()
    if t in ("class", "top", "all"):
        return t
    return tuple(int(p) for p in t.split(","))


@dataclass(frozen=True)
class _Stage1:
    setting: Any
    audited_dir: Path
    discovery_path: Path
    validity: dict[str, Any]
    p_at_10: float | None
    discovered_class: str | None
    n_features: int
    audited_metrics: dict[str, Any]


def _group_accuracy(report, label: str, present: bool) -> float | None:
    g = report.group(label, present) if report is not None else None
    return None if g is None else g.accuracy


def _metrics_row(ev, spurious_class: str) -> dict[str, Any]:
    """The four metrics plus the spurious class with / without the feature (image level)."""
    m = ev.summary_metrics()
    wg = ev.image.worst_group
    return {"metrics": m, "spurious_with": _group_accuracy(ev.image, spurious_class, True),
            "spurious_without": _group_accuracy(ev.image, spurious_class, False),
            "worst_group": None if wg is None else f"{wg.label} {'with' if wg.feature_present else 'without'}"}


def _evaluate_dir(ckpt: Path, ev_ds, spurious_class: str, feature: str, templates, region_mode: str,
                  progress: bool) -> dict[str, Any]:
    """Evaluate a checkpoint on the eval test split once; cached in ``ckpt/benchmark_eval.json``."""
    from ravl.evaluation.metrics import evaluate
    from ravl.models import load_model
    from ravl.utils.io import atomic_write_json, read_json

    path = ckpt / "benchmark_eval.json"
    if path.exists():
        return read_json(path)
    model = load_model(None, checkpoint=ckpt)
    ev = evaluate(model, ev_ds, split="test", templates=templates, spurious_feature=feature, region_mode=region_mode,
                  progress=progress)
    row = _metrics_row(ev, spurious_class)
    atomic_write_json(path, row)
    return row


def _stage1(spec: SettingSpec, work: Path, config: MitigationBenchmarkConfig, progress: bool) -> _Stage1:
    from ravl.data.dataset import load_dataset
    from ravl.data.synthetic import CAPTION_TEMPLATES, make_spurious_benchmark
    from ravl.discovery import precision_at_k
    from ravl.discovery.pipeline import discover_on_inputs, discovery_inputs
    from ravl.evaluation.metrics import check_setting_validity, evaluate
    from ravl.models import load_model
    from ravl.training.loop import FinetuneConfig, finetune
    from ravl.utils.io import atomic_write_json, read_json

    setting = make_spurious_benchmark(work / "setting", spurious_class=spec.spurious_class, feature=spec.feature,
                                      cramers_v=spec.cramers_v, n_train=config.n_train, n_eval=config.n_eval,
                                      source=config.source, random_state=spec.seed, progress=progress)
    audited_dir = work / "model"
    model = load_model("tiny", seed=spec.seed)
    finetune(model, load_dataset(setting.train_dir), audited_dir,
             FinetuneConfig(epochs=config.epochs, batch_size=config.batch_size, seed=spec.seed),
             progress=progress, init={"model": "tiny", "seed": spec.seed, "checkpoint": None})
    ev = load_dataset(setting.eval_dir)
    disc_dir = work / "discovery"
    vpath, dpath, spath = disc_dir / "validity.json", disc_dir / "discovery.json", disc_dir / "score.json"
    if not vpath.exists():
        val = evaluate(model, ev, split="val", templates=CAPTION_TEMPLATES, spurious_feature=spec.feature,
                       regions=False, progress=progress)
        atomic_write_json(vpath, check_setting_validity(val, setting.spurious_class, min_gap=config.min_gap).to_dict())
    validity = read_json(vpath)
    if not dpath.exists() or not spath.exists():
        inputs = discovery_inputs(model, ev, split="val", templates=CAPTION_TEMPLATES, region_mode=config.region_mode,
                                  progress=progress)
        disc = discover_on_inputs(inputs, random_state=spec.seed, progress=progress,
                                  meta={"model": "tiny", "checkpoint": str(audited_dir.resolve()),
                                        "data": str(Path(setting.eval_dir).resolve()), "split": "val"})
        p10 = None
        if disc.top is not None:
            ranked = [inputs.region_attributes[r.region_index] for r in disc.top.regions]
            p10 = float(precision_at_k(ranked, spec.feature, k=config.k))
        disc.to_json(dpath)
        atomic_write_json(spath, {"precision_at_10": p10, "class": disc.top.class_name if disc.top else None,
                                  "n_features": len(disc.features)})
    score = read_json(spath)
    audited = _evaluate_dir(audited_dir, ev, spec.spurious_class, spec.feature, CAPTION_TEMPLATES,
                            config.region_mode, progress)
    return _Stage1(setting, audited_dir, dpath, validity, score["precision_at_10"], score["class"],
                   int(score["n_features"]), audited)


def _mitigate_one(spec: SettingSpec, work: Path, config: MitigationBenchmarkConfig, s1: _Stage1, method: str,
                  labelling, progress: bool, datasets: dict[str, Any]) -> tuple[dict[str, Any], Any]:
    """Run one method (or reuse the audited model for ``standard``); returns (row fields, labelling).

    ``datasets`` caches the setting's loaded ``"train"`` / ``"eval"`` datasets across methods.
    """
    from dataclasses import replace

    from ravl.data.dataset import load_dataset
    from ravl.data.synthetic import CAPTION_TEMPLATES
    from ravl.mitigation.api import MitigationOptions, mitigate
    from ravl.mitigation.labelling import label_regions
    from ravl.models import load_model
    from ravl.training.loop import FinetuneConfig

    cfg = FinetuneConfig(epochs=config.epochs, batch_size=config.batch_size, seed=spec.seed)
    if method == "standard":
        # mitigate(method="standard", start="init") with the audited recipe reproduces the audited
        # fine-tuning bit for bit (tests/mitigation/test_api.py), so its metrics are the audited model's.
        return {"start": "init", "epochs": config.epochs, "reused_audited": True, **s1.audited_metrics,
                "labelling_precision": None, "labelling_recall": None, "val_zero_shot_accuracy": None}, labelling
    if s1.n_features == 0:
        return {"start": None, "epochs": None, "skipped": "discovery found no feature"}, labelling
    if not datasets:
        datasets.update(train=load_dataset(s1.setting.train_dir), eval=load_dataset(s1.setting.eval_dir))
    train, ev = datasets["train"], datasets["eval"]
    if labelling is None:
        from ravl.discovery import DiscoveryResult

        audited = load_model(None, checkpoint=s1.audited_dir)
        labelling = label_regions(audited, train, DiscoveryResult.from_json(s1.discovery_path),
                                  features=_features_option(config.features), region_mode=config.region_mode,
                                  split=cfg.train_split, min_gap_ratio=config.min_gap_ratio,
                                  assignment_quantile=config.assignment_quantile, progress=progress)
    start = "checkpoint" if method == "ravl-continue" else "init"
    if start == "checkpoint":
        cfg = replace(cfg, epochs=config.continue_epochs)
    opts = MitigationOptions(features=_features_option(config.features), min_gap_ratio=config.min_gap_ratio,
                             assignment_quantile=config.assignment_quantile, region_mode=config.region_mode,
                             lam=config.lam, eta=config.eta, spurious_names=config.spurious_names,
                             templates=tuple(CAPTION_TEMPLATES))
    out = work / method
    res = mitigate(s1.audited_dir, train, s1.discovery_path, out_dir=out, method=method.replace("-continue", ""),
                   start=start, config=cfg, options=opts, labelling=labelling, progress=progress)
    metrics = _evaluate_dir(out, ev, spec.spurious_class, spec.feature, CAPTION_TEMPLATES, config.region_mode,
                            progress)
    truth = (res.labelling or {}).get("truth") or {}
    last = res.history[-1] if res.history else {}
    return {"start": start, "epochs": cfg.epochs, "reused_audited": False, **metrics,
            "labelling_precision": truth.get("region_precision"), "labelling_recall": truth.get("region_recall"),
            "val_zero_shot_accuracy": last.get("val_zero_shot_accuracy")}, labelling


def run_mitigation_setting(spec: SettingSpec, work_dir: str | os.PathLike,
                           config: MitigationBenchmarkConfig = MitigationBenchmarkConfig(), *,
                           methods: Sequence[str] = MITIGATION_BENCHMARK_METHODS, progress: bool = False,
                           done: set[tuple[str, str]] | None = None) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Stage 1 then ``methods`` on one setting; returns ``(result rows, timing rows)``.

    Rows of ``(spec.key, method)`` pairs in ``done`` are skipped. Runs with ``config.threads``
    threads (restored afterwards) and holds a lock on the setting's folder.
    """
    for m in methods:
        check_choice(m, "methods[i]", "run_mitigation_setting", MITIGATION_BENCHMARK_METHODS)
    done = done or set()
    todo = [m for m in methods if (spec.key, m) not in done]
    if not todo:
        return [], []
    work = Path(work_dir) / spec.key
    work.mkdir(parents=True, exist_ok=True)
    with _file_lock(work / ".lock"), _thread_limits(config.threads):
        t0 = time.monotonic()
        s1 = _stage1(spec, work, config, progress)
        setup_s = round(time.monotonic() - t0, 3)
        base = {"setting": spec.key, **asdict(spec), "achieved_v": s1.setting.achieved_v,
                "valid": bool(s1.validity["valid"]), "validity_gap": s1.validity["gap"],
                "precision_at_10": s1.p_at_10, "discovered_class": s1.discovered_class,
                "class_correct": s1.discovered_class == spec.spurious_class, "n_features": s1.n_features}
        rows, timings, labelling, datasets = [], [], None, {}
        for m in todo:
            t1 = time.monotonic()
            fields_, labelling = _mitigate_one(spec, work, config, s1, m, labelling, progress, datasets)
            rows.append({**base, "method": m, **fields_})
            timings.append({"setting": spec.key, "method": m, "method_seconds": round(time.monotonic() - t1, 3),
                            "setup_seconds": setup_s, "threads": config.threads, "pid": os.getpid()})
    return rows, timings


@dataclass(frozen=True)
class _Task:
    spec: SettingSpec
    work_dir: str
    config: MitigationBenchmarkConfig
    methods: tuple[str, ...]
    done: frozenset = field(default_factory=frozenset)


def _task(task: _Task) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The per-setting function shipped to the execution backend (top level, picklable)."""
    return run_mitigation_setting(task.spec, task.work_dir, task.config, methods=task.methods, progress=False,
                                  done=set(task.done))


def _canonical(rows: Sequence[dict[str, Any]], specs: Sequence[SettingSpec], methods: Sequence[str]
               ) -> list[dict[str, Any]]:
    order = {s.key: i for i, s in enumerate(specs)}
    morder = {m: i for i, m in enumerate(methods)}
    keep = [r for r in rows if r["setting"] in order and r["method"] in morder]
    return sorted(keep, key=lambda r: (order[r["setting"]], morder[r["method"]]))


def run_mitigation_grid(specs: Sequence[SettingSpec], work_dir: str | os.PathLike,
                        config: MitigationBenchmarkConfig = MitigationBenchmarkConfig(), *,
                        methods: Sequence[str] = MITIGATION_BENCHMARK_METHODS, backend: str = "serial",
                        num_workers: int | None = None, ray_address: str | None = None,
                        progress: bool = True) -> list[dict[str, Any]]:
    """Run every setting (resuming from ``work_dir/results.jsonl``) and return its rows in grid order.

    Args:
        specs: The settings (:func:`grid`).
        work_dir: Work folder (see the module docstring); one configuration per folder.
        config: Sizes, recipe and options.
        methods: Names from :data:`MITIGATION_BENCHMARK_METHODS`.
        backend: ``"serial"`` or ``"ray"`` (:func:`ravl.evaluation.backends.run_tasks`).
        num_workers: Ray: settings at once (default: CPUs / ``config.threads``).
        ray_address: Ray: an existing cluster's address (default: a private local Ray).
        progress: Progress bar over settings.

    Raises:
        CheckpointError: When ``work_dir`` holds a run with another configuration.
    """
    from ravl.evaluation.backends import run_tasks
    from ravl.exceptions import CheckpointError
    from ravl.utils.io import atomic_write_json, atomic_write_text, read_json

    for m in methods:
        check_choice(m, "methods[i]", "run_mitigation_grid", MITIGATION_BENCHMARK_METHODS)
    work = Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    cfg_path = work / "benchmark_config.json"
    if cfg_path.exists() and read_json(cfg_path) != config.to_dict():
        raise CheckpointError(f"{work} holds a mitigation benchmark with another configuration "
                              f"({read_json(cfg_path)}); use another --out folder to run this one.")
    atomic_write_json(cfg_path, config.to_dict())
    res_path, tim_path = work / "results.jsonl", work / "timings.jsonl"
    rows = _read_rows(res_path)
    done = {(r["setting"], r["method"]) for r in rows}
    tasks = []
    for spec in dict.fromkeys(specs):
        if any((spec.key, m) not in done for m in methods):
            tasks.append(_Task(spec, str(work), config, tuple(methods),
                               frozenset(d for d in done if d[0] == spec.key)))
    for _task_, (new, timings) in run_tasks(_task, tasks, backend=backend, num_workers=num_workers,
                                            ray_address=ray_address, threads=config.threads, progress=progress,
                                            desc="settings"):
        if new:
            _append_jsonl(res_path, new)
            _append_jsonl(tim_path, timings)
            rows.extend(new)
    out = _canonical(rows, specs, methods)
    # Rows of other settings / methods stay in the file, after the requested ones.
    rest = [r for r in rows if r not in out]
    atomic_write_text(res_path, "".join(json.dumps(r) + "\n" for r in out + rest))
    return out


# ---------------------------------------------------------------------------------------------
# Summary (the paper's Table 3 shape)
# ---------------------------------------------------------------------------------------------

def _metric(row: Mapping[str, Any], name: str) -> float | None:
    v = (row.get("metrics") or {}).get(name)
    return None if v is None else float(v)


def summarize_mitigation(rows: Sequence[dict[str, Any]], *, thresholds: Sequence[float] = (0.6, 0.8),
                         baseline: str = "standard") -> dict[str, Any]:
    """Mean (95 % CI) of the four metrics per method over valid settings with P@10 > threshold.

    Also the paired difference to ``baseline`` per setting (same setting, method − baseline), the
    fairer test of "better than standard fine-tuning" when settings differ in difficulty.

    Returns:
        ``{"thresholds": [{"threshold", "n_settings", "settings", "methods": [{"method", "n",
        <metric>: {"mean", "ci95", "n"}, "delta": {<metric>: {"mean", "ci95", "n"}}}]}],
        "n_settings", "n_valid", "baseline"}``.
    """
    valid = [r for r in rows if r.get("valid") and not r.get("skipped")]
    seen = list(dict.fromkeys(r["method"] for r in rows))
    # the benchmark's own order first (a resumed run may have appended rows out of order)
    methods = [m for m in MITIGATION_BENCHMARK_METHODS if m in seen] + \
              [m for m in seen if m not in MITIGATION_BENCHMARK_METHODS]
    out = {"baseline": baseline, "n_settings": len({r["setting"] for r in rows}),
           "n_valid": len({r["setting"] for r in rows if r.get("valid")}), "thresholds": []}
    base = {r["setting"]: r for r in valid if r["method"] == baseline}
    for th in thresholds:
        keep = {r["setting"] for r in valid if r.get("precision_at_10") is not None and r["precision_at_10"] > th}
        block = {"threshold": th, "n_settings": len(keep), "settings": sorted(keep), "methods": []}
        for m in methods:
            mr = [r for r in valid if r["method"] == m and r["setting"] in keep]
            entry: dict[str, Any] = {"method": m, "n": len(mr), "delta": {}}
            for name in SUMMARY_METRICS:
                vals = [v for v in (_metric(r, name) for r in mr) if v is not None]
                mean, half, n = _mean_ci(vals)
                entry[name] = {"mean": _none(mean), "ci95": _none(half), "n": n}
                diffs = [_metric(r, name) - _metric(base[r["setting"]], name) for r in mr
                         if r["setting"] in base and _metric(r, name) is not None
                         and _metric(base[r["setting"]], name) is not None]
                mean, half, n = _mean_ci(diffs)
                entry["delta"][name] = {"mean": _none(mean), "ci95": _none(half), "n": n}
            block["methods"].append(entry)
        out["thresholds"].append(block)
    return out


def _none(x: float) -> float | None:
    return None if x != x else float(x)


def _cell(c: Mapping[str, Any], *, signed: bool = False, scale: float = 100.0) -> str:
    if not c or c.get("mean") is None:
        return "–"
    mean = c["mean"] * scale
    s = f"{mean:+.1f}" if signed else f"{mean:.1f}"
    if c.get("ci95") is not None:
        s += f" ± {c['ci95'] * scale:.1f}"
    return s


def format_mitigation_summary(summary: Mapping[str, Any], config: Mapping[str, Any] | None = None) -> str:
    """Markdown: one Table 3-shaped table per P@10 threshold, plus the paired differences."""
    lines = [f"Valid settings: {summary['n_valid']} of {summary['n_settings']} (validity rule: spurious-class "
             "accuracy gap >= 0.1 on eval val)."]
    if config:
        lines.append(f"Per setting: {config.get('n_train')} training images, {config.get('epochs')} epochs from the "
                     f"tiny CLIP's initialisation (ravl-continue: {config.get('continue_epochs')} epochs from the "
                     f"audited weights), region mode {config.get('region_mode')}, λ = {config.get('lam')}, "
                     f"features = {config.get('features')}.")
    lines.append("")
    head = "| method | " + " | ".join(SUMMARY_METRICS) + " | n |"
    sep = "|---|" + "---|" * (len(SUMMARY_METRICS) + 1)
    for block in summary["thresholds"]:
        lines += [f"### Settings with Stage-1 P@10 > {block['threshold']:g} (n = {block['n_settings']})", "",
                  "Accuracy in % (mean ± 95 % CI half-width over settings), zero-shot on the evaluation test split.",
                  "", head, sep]
        for e in block["methods"]:
            lines.append(f"| {e['method']} | " + " | ".join(_cell(e[m]) for m in SUMMARY_METRICS) + f" | {e['n']} |")
        lines += ["", f"Paired difference to {summary['baseline']} (points, same setting):", "", head, sep]
        for e in block["methods"]:
            if e["method"] == summary["baseline"]:
                continue
            lines.append(f"| {e['method']} | " + " | ".join(_cell(e["delta"][m], signed=True)
                                                             for m in SUMMARY_METRICS) + f" | {e['n']} |")
        lines.append("")
    return "\n".join(lines) + "\n"
