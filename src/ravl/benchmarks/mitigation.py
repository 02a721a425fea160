"""The mitigation benchmark: Stage 1 then every mitigation method on a grid of controlled settings.

For each setting (feature x spurious class x Cramér's V x seed) the runner

1. builds the data (:func:`ravl.make_spurious_benchmark`) and fine-tunes the tiny CLIP with the
   standard contrastive loss from its seeded initialisation, or with ``init="pretrained"`` from
   its shipped pretrained weights (the paper's protocol), giving the *audited* model;
2. applies the validity rule on the evaluation ``val`` split and runs RaVL discovery there
   (``discovery.json``), scoring Precision@10 of the top feature against the planted
   ``region_attributes``;
3. runs every requested mitigation method with :func:`ravl.mitigation.api.mitigate` (regions
   labelled by the audited model and the discovery, fine-tuned again from the same
   initialisation and recipe, or continued from the audited weights for ``ravl-continue``), and
4. evaluates each resulting model zero-shot on the evaluation ``test`` split: Image Overall,
   Image Worst-Group, Region Overall, Region Worst-Group (docs/algorithm.md §4), every
   (class x feature present/absent) group at image and region level (``groups``), and the same
   on the evaluation ``val`` split (``val``: for choosing settings without touching test).

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
as Ray tasks (:mod:`ravl.utils.tasks`) with identical results.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from ravl.benchmarks.grid import (
    GRID_INITS,
    SettingSpec,
    append_jsonl,
    check_config_file,
    file_lock,
    grid,
    grid_init_record,
    grid_layout,
    mean_ci,
    nan_to_none,
    read_rows,
    strict_from_dict,
    thread_limits,
)
from ravl.data.dataset import load_dataset
from ravl.data.synthetic import CAPTION_TEMPLATES, make_spurious_benchmark
from ravl.discovery.metrics import precision_at_k
from ravl.discovery.pipeline import discover_on_inputs, discovery_inputs
from ravl.discovery.result import DiscoveryResult
from ravl.evaluation.metrics import SUMMARY_METRICS, check_setting_validity, evaluate
from ravl.exceptions import InvalidParameterError
from ravl.mitigation.api import MitigationOptions, load_init_model, mitigate
from ravl.mitigation.labelling import label_regions
from ravl.mitigation.registry import get_mitigation_method, list_mitigation_methods
from ravl.models.base import load_model
from ravl.models.regions import DEFAULT_REGION_MODE
from ravl.training.loop import FinetuneConfig, finetune
from ravl.utils.io import atomic_write_json, atomic_write_text, read_json
from ravl.utils.outputs import locks_output
from ravl.utils.tasks import run_tasks
from ravl.utils.validation import check_choice, check_float, check_int

__all__ = ["CONTINUE_SUFFIX", "benchmark_methods", "default_benchmark_methods", "check_benchmark_method",
           "MitigationBenchmarkConfig", "run_mitigation_setting", "run_mitigation_grid", "summarize_mitigation",
           "summarize_groups", "GROUP_COLUMNS", "grid"]

logger = logging.getLogger(__name__)

#: ``NAME-continue`` runs the registered method NAME from the audited weights for
#: :attr:`MitigationBenchmarkConfig.continue_epochs` (e.g. ``ravl-continue``).
CONTINUE_SUFFIX = "-continue"

#: Row fields that go to ``timings.jsonl`` instead of ``results.jsonl``.
TIMING_FIELDS = ("method_seconds", "setup_seconds")


def benchmark_methods() -> list[str]:
    """Every name the benchmark accepts: each registered mitigation method (from the initialisation)
    and its ``NAME-continue`` variant (from the audited weights)."""
    names = list_mitigation_methods()
    return names + [n + CONTINUE_SUFFIX for n in names]


def default_benchmark_methods() -> list[str]:
    """The default method list: every registered method in registration order, then ``ravl-continue``."""
    names = list_mitigation_methods()
    return names + (["ravl" + CONTINUE_SUFFIX] if "ravl" in names else [])


def check_benchmark_method(name: str, caller: str = "the mitigation benchmark") -> tuple[str, str]:
    """``(registered method, start)`` of a benchmark method name; unknown names raise with close matches."""
    base, start = name, "init"
    if isinstance(name, str) and name.endswith(CONTINUE_SUFFIX):
        base, start = name[: -len(CONTINUE_SUFFIX)], "checkpoint"
    get_mitigation_method(base, where=f"a method of {caller}")
    return base, start


def _default_finetune() -> FinetuneConfig:
    return FinetuneConfig(epochs=4, batch_size=128)


@dataclass(frozen=True)
class MitigationBenchmarkConfig:
    """Sizes, recipe and mitigation options shared by every setting of a mitigation grid.

    Attributes:
        n_train: Fine-tuning images per setting (5 % of them validation).
        n_eval: Evaluation images (half val: discovery and validity; half test: the metrics).
        continue_epochs: Epochs of the ``NAME-continue`` methods (from the audited weights).
        source: Digit source of :func:`ravl.make_spurious_benchmark`.
        min_gap: Validity rule threshold (spurious-class accuracy gap on eval val).
        k: Precision@k cut-off of the discovery score.
        threads: Torch / BLAS / OpenMP threads inside each setting (fixed, so results do not
            depend on the process or backend).
        finetune: The recipe of the original (audited) fine-tuning and of every method started
            from the initialisation; its ``seed`` is replaced by each setting's seed.
        options: What every mitigation method shares (:class:`~ravl.mitigation.MitigationOptions`);
            its ``region_mode`` (``None``: the library default) is also discovery's and the
            evaluation's, its ``templates`` (``None``: the captions' templates) the class text.
        method_configs: Per registered method, the fields of its config that differ from the
            defaults, e.g. ``{"ravl": {"lam": 0.5}, "vl-gdro": {"eta": 0.1}}``
            (``NAME-continue`` uses NAME's).
        init: Where the audited fine-tuning and every method from the initialisation start:
            ``"scratch"`` (fresh weights seeded by the setting's seed) or ``"pretrained"`` (the
            tiny CLIP pretrained on the broad synthetic corpus, ``load_model("tiny",
            pretrained="synthetic")``: the paper's protocol of fine-tuning a pretrained CLIP).
        layout: Image layout of every setting: the fields of
            :class:`~ravl.data.synthetic.SyntheticLayout` that differ from the default 2 x 2 grid
            (e.g. ``{"grid_size": 3, "distractors": 2}``).
    """

    n_train: int = 6000
    n_eval: int = 2000
    continue_epochs: int = 2
    init: str = "scratch"
    source: str = "sklearn"
    min_gap: float = 0.1
    k: int = 10
    threads: int = 2
    finetune: FinetuneConfig = field(default_factory=_default_finetune)
    options: MitigationOptions = field(default_factory=MitigationOptions)
    method_configs: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    layout: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        c = "MitigationBenchmarkConfig"
        object.__setattr__(self, "layout", grid_layout(self.layout, f"the 'layout' parameter of {c}"))
        for name, low in (("n_train", 20), ("n_eval", 20), ("continue_epochs", 1), ("k", 1), ("threads", 1)):
            check_int(getattr(self, name), name, c, low=low)
        check_float(self.min_gap, "min_gap", c, low=-1, high=1)
        check_choice(self.init, "init", c, GRID_INITS)
        if isinstance(self.finetune, Mapping):
            object.__setattr__(self, "finetune", FinetuneConfig.from_dict(self.finetune))
        if isinstance(self.options, Mapping):
            object.__setattr__(self, "options", MitigationOptions.from_dict(self.options))
        if not isinstance(self.finetune, FinetuneConfig):
            raise InvalidParameterError(f"The 'finetune' parameter of {c} must be a FinetuneConfig. "
                                        f"Got {type(self.finetune).__name__}.")
        if not isinstance(self.options, MitigationOptions):
            raise InvalidParameterError(f"The 'options' parameter of {c} must be a MitigationOptions. "
                                        f"Got {type(self.options).__name__}.")
        configs = {}
        for name, cfg in dict(self.method_configs).items():
            spec = get_mitigation_method(name, where=f"the 'method_configs' parameter of {c}")
            configs[name] = spec.make_config(dict(cfg)).to_dict() if not hasattr(cfg, "to_dict") else cfg.to_dict()
            # only the fields that differ from the defaults are kept, so equal configs compare equal
            defaults = spec.make_config(None).to_dict()
            configs[name] = {k: v for k, v in configs[name].items() if defaults.get(k) != v}
        object.__setattr__(self, "method_configs", {k: v for k, v in configs.items() if v})

    @property
    def region_mode(self) -> str:
        """Region embedding mode of discovery, labelling, region losses and the evaluation."""
        return self.options.region_mode or DEFAULT_REGION_MODE

    def method_config(self, method: str) -> dict[str, Any]:
        """The config fields given for a registered method (``{}``: its defaults)."""
        return dict(self.method_configs.get(method, {}))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (``benchmark_config.json``)."""
        out = {"n_train": self.n_train, "n_eval": self.n_eval, "continue_epochs": self.continue_epochs,
               "source": self.source, "min_gap": self.min_gap, "k": self.k, "threads": self.threads,
               "finetune": self.finetune.to_dict(), "options": self.options.to_dict(),
               "method_configs": {k: dict(v) for k, v in sorted(self.method_configs.items())}}
        if self.init != "scratch":   # absent for the default, so earlier work folders still resume
            out["init"] = self.init
        if self.layout:              # likewise
            out["layout"] = dict(self.layout)
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> MitigationBenchmarkConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error."""
        return strict_from_dict(cls, d)


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


def _groups(report) -> list[dict[str, Any]]:
    return [] if report is None else [{"label": g.label, "with": g.feature_present, "accuracy": g.accuracy, "n": g.n}
                                      for g in report.groups]


def _metrics_row(ev, spurious_class: str) -> dict[str, Any]:
    """The four metrics, the spurious class with / without the feature (image level) and every group."""
    m = ev.summary_metrics()
    wg = ev.image.worst_group
    return {"metrics": m, "spurious_with": _group_accuracy(ev.image, spurious_class, True),
            "spurious_without": _group_accuracy(ev.image, spurious_class, False),
            "worst_group": None if wg is None else f"{wg.label} {'with' if wg.feature_present else 'without'}",
            "groups": {"image": _groups(ev.image), "region": _groups(ev.core_region)}}


def _evaluate_dir(ckpt: Path, ev_ds, spurious_class: str, feature: str, templates, region_mode: str,
                  progress: bool) -> dict[str, Any]:
    """Evaluate a checkpoint on the eval test split (the row's metrics) and on the eval val split
    (``"val"``: the same fields, for choosing settings; never the test split); cached in
    ``ckpt/benchmark_eval.json`` (a cache without ``"val"`` gets it added)."""
    path = ckpt / "benchmark_eval.json"
    row = read_json(path) if path.exists() else None
    if row is not None and "val" in row:
        return row
    model = load_model(None, checkpoint=ckpt)
    if row is None:
        ev = evaluate(model, ev_ds, split="test", templates=templates, spurious_feature=feature,
                      region_mode=region_mode, progress=progress)
        row = _metrics_row(ev, spurious_class)
    val = evaluate(model, ev_ds, split="val", templates=templates, spurious_feature=feature, region_mode=region_mode,
                   progress=progress)
    row["val"] = _metrics_row(val, spurious_class)
    atomic_write_json(path, row)
    return row


def _stage1(spec: SettingSpec, work: Path, config: MitigationBenchmarkConfig, progress: bool) -> _Stage1:
    setting = make_spurious_benchmark(work / "setting", spurious_class=spec.spurious_class, feature=spec.feature,
                                      cramers_v=spec.cramers_v, n_train=config.n_train, n_eval=config.n_eval,
                                      source=config.source, layout=config.layout, random_state=spec.seed,
                                      progress=progress)
    audited_dir = work / "model"
    init = grid_init_record(config.init, spec.seed)
    model = load_init_model(init)
    finetune(model, load_dataset(setting.train_dir), audited_dir,
             replace(config.finetune, seed=spec.seed), progress=progress, init=init)
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
    cfg = replace(config.finetune, seed=spec.seed)
    base_method, start = check_benchmark_method(method)
    if method == "standard":
        # mitigate(method="standard", start="init") with the audited recipe reproduces the audited
        # fine-tuning bit for bit (tests/mitigation/test_api.py), so its metrics are the audited model's.
        return {"start": "init", "epochs": cfg.epochs, "reused_audited": True, **s1.audited_metrics,
                "labelling_precision": None, "labelling_recall": None, "val_zero_shot_accuracy": None}, labelling
    if s1.n_features == 0:
        return {"start": None, "epochs": None, "skipped": "discovery found no feature"}, labelling
    if not datasets:
        datasets.update(train=load_dataset(s1.setting.train_dir), eval=load_dataset(s1.setting.eval_dir))
    train, ev = datasets["train"], datasets["eval"]
    opts = replace(config.options, templates=config.options.templates or tuple(CAPTION_TEMPLATES))
    if labelling is None:
        audited = load_model(None, checkpoint=s1.audited_dir)
        labelling = label_regions(audited, train, DiscoveryResult.from_json(s1.discovery_path),
                                  features=opts.features, region_mode=config.region_mode,
                                  split=cfg.train_split, min_gap_ratio=opts.min_gap_ratio,
                                  assignment_quantile=opts.assignment_quantile, progress=progress)
    if start == "checkpoint":
        cfg = replace(cfg, epochs=config.continue_epochs)
    out = work / method
    res = mitigate(s1.audited_dir, train, s1.discovery_path, out_dir=out, method=base_method, start=start,
                   config=cfg, options=opts, method_config=config.method_config(base_method), labelling=labelling,
                   allow_empty_labelling=True, progress=progress)  # the grid records such runs as they are
    metrics = _evaluate_dir(out, ev, spec.spurious_class, spec.feature, CAPTION_TEMPLATES, config.region_mode,
                            progress)
    truth = (res.labelling or {}).get("truth") or {}
    last = res.history[-1] if res.history else {}
    return {"start": start, "epochs": cfg.epochs, "reused_audited": False, **metrics,
            "labelling_precision": truth.get("region_precision"), "labelling_recall": truth.get("region_recall"),
            "val_zero_shot_accuracy": last.get("val_zero_shot_accuracy")}, labelling


def run_mitigation_setting(spec: SettingSpec, work_dir: str | os.PathLike,
                           config: MitigationBenchmarkConfig = MitigationBenchmarkConfig(), *,
                           methods: Sequence[str] | None = None, progress: bool = False,
                           done: set[tuple[str, str]] | None = None) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Stage 1 then ``methods`` on one setting; returns ``(result rows, timing rows)``.

    Rows of ``(spec.key, method)`` pairs in ``done`` are skipped. Runs with ``config.threads``
    threads (restored afterwards) and holds a lock on the setting's folder.
    """
    methods = default_benchmark_methods() if methods is None else list(methods)
    for m in methods:
        check_benchmark_method(m, "run_mitigation_setting")
    done = done or set()
    todo = [m for m in methods if (spec.key, m) not in done]
    if not todo:
        return [], []
    work = Path(work_dir) / spec.key
    work.mkdir(parents=True, exist_ok=True)
    with file_lock(work / ".lock"), thread_limits(config.threads):
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


@locks_output("work_dir", "ravl benchmark mitigate")
def run_mitigation_grid(specs: Sequence[SettingSpec], work_dir: str | os.PathLike,
                        config: MitigationBenchmarkConfig = MitigationBenchmarkConfig(), *,
                        methods: Sequence[str] | None = None, backend: str = "serial",
                        num_workers: int | None = None, ray_address: str | None = None,
                        progress: bool = True) -> list[dict[str, Any]]:
    """Run every setting (resuming from ``work_dir/results.jsonl``) and return its rows in grid order.

    Args:
        specs: The settings (:func:`grid`).
        work_dir: Work folder (see the module docstring); one configuration per folder.
        config: Sizes, recipe and options.
        methods: Registered mitigation methods and ``NAME-continue`` variants
            (default: :func:`default_benchmark_methods`).
        backend: ``"serial"`` or ``"ray"`` (:func:`ravl.utils.tasks.run_tasks`).
        num_workers: Ray: settings at once (default: CPUs / ``config.threads``).
        ray_address: Ray: an existing cluster's address (default: a private local Ray).
        progress: Progress bar over settings.

    Raises:
        CheckpointError: When ``work_dir`` holds a run with another configuration.
    """
    methods = default_benchmark_methods() if methods is None else list(methods)
    for m in methods:
        check_benchmark_method(m, "run_mitigation_grid")
    work = Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    res_path, tim_path = work / "results.jsonl", work / "timings.jsonl"
    rows = read_rows(res_path)
    check_config_file(work / "benchmark_config.json", config.to_dict(), has_results=bool(rows))
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
            append_jsonl(res_path, new)
            append_jsonl(tim_path, timings)
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
    order = default_benchmark_methods()
    methods = [m for m in order if m in seen] + [m for m in seen if m not in order]
    out = {"baseline": baseline, "n_settings": len({r["setting"] for r in rows}),
           "n_valid": len({r["setting"] for r in rows if r.get("valid")}), "thresholds": []}
    base = {r["setting"]: r for r in valid if r["method"] == baseline}

    def paired(mr: list[dict[str, Any]], ref: dict[str, dict[str, Any]], name: str) -> dict[str, Any]:
        diffs = [_metric(r, name) - _metric(ref[r["setting"]], name) for r in mr
                 if r["setting"] in ref and _metric(r, name) is not None and _metric(ref[r["setting"]], name) is not None]
        mean, half, n = mean_ci(diffs)
        return {"mean": nan_to_none(mean), "ci95": nan_to_none(half), "n": n}

    for th in thresholds:
        keep = {r["setting"] for r in valid if r.get("precision_at_10") is not None and r["precision_at_10"] > th}
        block = {"threshold": th, "n_settings": len(keep), "settings": sorted(keep), "methods": []}
        for m in methods:
            mr = [r for r in valid if r["method"] == m and r["setting"] in keep]
            entry: dict[str, Any] = {"method": m, "n": len(mr), "delta": {}}
            for name in SUMMARY_METRICS:
                vals = [v for v in (_metric(r, name) for r in mr) if v is not None]
                mean, half, n = mean_ci(vals)
                entry[name] = {"mean": nan_to_none(mean), "ci95": nan_to_none(half), "n": n}
                entry["delta"][name] = paired(mr, base, name)
            block["methods"].append(entry)
        # The best peer by mean Image Worst-Group (peers: every method but the baseline and RaVL's own rows).
        peers = [e for e in block["methods"] if e["method"] != baseline and not e["method"].startswith("ravl")
                 and e["Image Worst-Group"]["mean"] is not None]
        best = max(peers, key=lambda e: e["Image Worst-Group"]["mean"], default=None)
        block["best_peer"] = None if best is None else best["method"]
        if best is not None:
            ref = {r["setting"]: r for r in valid if r["method"] == best["method"]}
            for e in block["methods"]:
                mr = [r for r in valid if r["method"] == e["method"] and r["setting"] in keep]
                e["delta_best_peer"] = {name: paired(mr, ref, name) for name in SUMMARY_METRICS}
        out["thresholds"].append(block)
    return out


#: Columns of :func:`summarize_groups` (image level unless marked region).
GROUP_COLUMNS = ("spurious class with feature", "spurious class without feature",
                 "other classes with feature (worst)", "other classes with feature (mean)",
                 "other classes without feature (mean)", "Image Worst-Group",
                 "region: other classes with feature (worst)")


def _group_values(row: Mapping[str, Any], spurious: str, level: str = "image") -> dict[str, float | None]:
    groups = ((row.get("groups") or {}).get(level)) or []
    def pick(pred):
        return [float(g["accuracy"]) for g in groups if pred(g)]
    other_with = pick(lambda g: g["label"] != spurious and g["with"])
    other_without = pick(lambda g: g["label"] != spurious and not g["with"])
    spur_with, spur_without = pick(lambda g: g["label"] == spurious and g["with"]), \
        pick(lambda g: g["label"] == spurious and not g["with"])
    return {"spurious class with feature": spur_with[0] if spur_with else None,
            "spurious class without feature": spur_without[0] if spur_without else None,
            "other classes with feature (worst)": min(other_with) if other_with else None,
            "other classes with feature (mean)": float(np.mean(other_with)) if other_with else None,
            "other classes without feature (mean)": float(np.mean(other_without)) if other_without else None}


def summarize_groups(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Where each method's errors are: per-group accuracies (class x feature present/absent) over valid settings.

    For every method, the mean (95 % CI over settings) of: the spurious class with and without
    the feature, the other classes with the feature (worst group and mean: the failure mode of
    images of other classes that carry the feature being called the spurious class), the other
    classes without it, Image Worst-Group, and the worst other-class-with-feature group on core
    regions. Groups come from the planted attribute of the evaluation test split.

    Returns:
        ``{"columns": [...], "n_settings": int, "methods": [{"method", "n", <column>: {"mean", "ci95", "n"}}]}``.
    """
    valid = [r for r in rows if r.get("valid") and not r.get("skipped") and r.get("groups")]
    methods = list(dict.fromkeys(r["method"] for r in valid))
    out: dict[str, Any] = {"columns": list(GROUP_COLUMNS), "n_settings": len({r["setting"] for r in valid}),
                           "methods": []}
    for m in methods:
        per = []
        for r in (r for r in valid if r["method"] == m):
            v = _group_values(r, r["spurious_class"])
            v["Image Worst-Group"] = _metric(r, "Image Worst-Group")
            v["region: other classes with feature (worst)"] = _group_values(
                r, r["spurious_class"], "region")["other classes with feature (worst)"]
            per.append(v)
        entry: dict[str, Any] = {"method": m, "n": len(per)}
        for col in GROUP_COLUMNS:
            mean, half, n = mean_ci([p[col] for p in per if p[col] is not None])
            entry[col] = {"mean": nan_to_none(mean), "ci95": nan_to_none(half), "n": n}
        out["methods"].append(entry)
    return out
