"""The discovery benchmark: a grid of controlled settings, one fine-tuned model per setting.

For each setting (feature x spurious class x Cramér's V x seed) the runner builds the data
(:func:`ravl.make_spurious_benchmark`), fine-tunes the tiny CLIP with the standard contrastive
loss, applies the validity rule on the evaluation ``val`` split, computes the discovery inputs
once (region embeddings and zero-shot scores) and runs every requested discovery method on them,
scoring Precision@10 of the top feature against the planted ``region_attributes``.

Work folder layout::

    OUT/benchmark_config.json    the BenchmarkConfig of the run (a folder holds one config)
    OUT/results.jsonl            one row per (setting, method); deterministic values only,
                                 rewritten in grid order x method order when a run ends
    OUT/timings.jsonl            wall-clock seconds per (setting, method), append-only
    OUT/<setting key>/           setting data, checkpoint, validity.json, inputs.npz

Everything is cached under the work folder and every setting's rows are appended to
``results.jsonl`` as soon as the setting finishes, so an interrupted run resumes where it stopped
and a finished (setting, method) row is never recomputed. Settings run serially or as Ray tasks
(:mod:`ravl.utils.tasks`); each setting fixes its own thread counts
(:attr:`BenchmarkConfig.threads`), so ``results.jsonl`` is byte-identical whichever backend ran it.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
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
from ravl.data.digits import DIGIT_CLASSES
from ravl.data.synthetic import CAPTION_TEMPLATES, make_spurious_benchmark
from ravl.discovery.metrics import precision_at_k
from ravl.discovery.pipeline import DiscoveryInputs, discovery_inputs
from ravl.discovery.registry import (
    RAVL_METHODS,
    discovery_method_info,
    get_discovery_method,
    list_discovery_methods,
)
from ravl.evaluation.metrics import check_setting_validity, evaluate
from ravl.exceptions import UnknownNameError
from ravl.models.base import load_model
from ravl.training.loop import STATE_FILE, FinetuneConfig, finetune
from ravl.utils.io import atomic_write_json, atomic_write_text, read_json
from ravl.utils.outputs import output_lock
from ravl.utils.tasks import run_tasks
from ravl.utils.validation import check_choice, check_float, check_int

__all__ = ["SettingSpec", "BenchmarkConfig", "GridPreset", "GRID_PRESETS", "DEFAULT_METHODS", "SettingResult",
           "grid", "run_setting", "run_grid", "summarize", "summary_tables", "method_adaptation", "DISCOVERY_METHODS",
           "ABLATIONS"]

logger = logging.getLogger(__name__)

#: Row fields that :func:`run_grid` writes to ``timings.jsonl`` instead of ``results.jsonl``.
TIMING_FIELDS = ("method_seconds", "setup_seconds")


@dataclass(frozen=True)
class BenchmarkConfig:
    """Sizes, training budget and thread count shared by every setting of a grid.

    Attributes:
        n_train: Fine-tuning images per setting (5 % of them validation).
        n_eval: Evaluation images (half val, used by discovery; half test).
        epochs: Fine-tuning epochs.
        batch_size: Fine-tuning batch size.
        source: Digit source of :func:`ravl.make_spurious_benchmark`.
        min_gap: Validity rule: spurious-class accuracy gap (with - without feature) on eval val.
        k: Precision@k cut-off.
        region_mode: Region embedding mode (``None``: the library default).
        threads: Torch intra-op, BLAS and OpenMP threads inside each setting. Fixed per setting
            (not inherited from the process) because CPU reductions can differ with the thread
            count; part of the configuration, so a folder is never extended with another count.
        init: ``"scratch"`` (fresh weights seeded by the setting's seed) or ``"pretrained"``
            (the tiny CLIP's shipped pretrained weights, ``load_model("tiny", pretrained="synthetic")``).
        layout: Image layout of every setting: the fields of
            :class:`~ravl.data.synthetic.SyntheticLayout` that differ from the default 2 x 2 grid
            (e.g. ``{"grid_size": 3, "distractors": 2}``).
    """

    n_train: int = 3000
    n_eval: int = 1000
    epochs: int = 5
    batch_size: int = 128
    source: str = "sklearn"
    min_gap: float = 0.1
    k: int = 10
    region_mode: str | None = None
    threads: int = 1
    init: str = "scratch"
    layout: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_choice(self.init, "init", "BenchmarkConfig", GRID_INITS)
        object.__setattr__(self, "layout", grid_layout(self.layout, "the 'layout' parameter of BenchmarkConfig"))
        check_int(self.n_train, "n_train", "BenchmarkConfig", low=2)
        check_int(self.n_eval, "n_eval", "BenchmarkConfig", low=2)
        check_int(self.epochs, "epochs", "BenchmarkConfig", low=1)
        check_int(self.batch_size, "batch_size", "BenchmarkConfig", low=2)
        check_float(self.min_gap, "min_gap", "BenchmarkConfig", low=-1, high=1)
        check_int(self.k, "k", "BenchmarkConfig", low=1)
        check_int(self.threads, "threads", "BenchmarkConfig", low=1)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (``benchmark_config.json``); ``init`` only when not ``"scratch"`` and
        ``layout`` only when not the default, so earlier work folders still resume."""
        out = asdict(self)
        if out["init"] == "scratch":
            del out["init"]
        if not out["layout"]:
            del out["layout"]
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> BenchmarkConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error."""
        return strict_from_dict(cls, d)


#: Default method list of the discovery grid: RaVL, its Table 2 ablations, Random, and every
#: image-level baseline under adaptation A (bare name) and adaptation B (``*_region``).
DEFAULT_METHODS = ("ravl", "ravl_gap_only", "ravl_influence_only", "ravl_unweighted", "random",
                   "distilling_failures", "george", "domino", "spurious_aware",
                   "distilling_failures_region", "george_region", "domino_region", "spurious_aware_region")


@dataclass(frozen=True)
class GridPreset:
    """A named grid: the settings and the per-setting budget (``ravl benchmark discover --grid NAME``)."""

    features: tuple[str, ...]
    spurious_classes: tuple[str, ...]
    strengths: tuple[float, ...]
    seeds: tuple[int, ...] = (0,)
    config: BenchmarkConfig = field(default_factory=BenchmarkConfig)
    description: str = ""

    def specs(self) -> list[SettingSpec]:
        """The preset's settings, in grid order."""
        return grid(self.features, self.spurious_classes, self.strengths, self.seeds)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {"features": list(self.features), "spurious_classes": list(self.spurious_classes),
                "strengths": list(self.strengths), "seeds": list(self.seeds), "config": self.config.to_dict(),
                "description": self.description}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> GridPreset:
        """Inverse of :meth:`to_dict`."""
        return cls(tuple(d["features"]), tuple(d["spurious_classes"]), tuple(float(v) for v in d["strengths"]),
                   tuple(int(s) for s in d.get("seeds", (0,))), BenchmarkConfig.from_dict(d.get("config", {})),
                   d.get("description", ""))


_FEATURES = ("red_square", "ring", "stripes")

#: ``default``: sized to about 20 minutes on a 2-core machine (docs/benchmarks.md section 3); at
#: this budget the tiny CLIP learns the shortcut partially (validity gaps ~0.6-0.9), the regime
#: that separates methods (at 2,000 images x 4 epochs every gap was 1.0 and most methods tie);
#: ``paper``: the reference's 50 MNIST-style settings per feature (10 classes x 5 strengths,
#: 10,000 fine-tuning and 2,000 evaluation images).
GRID_PRESETS: dict[str, GridPreset] = {
    "default": GridPreset(_FEATURES, ("nine", "three"), (0.8, 0.95), (0,), BenchmarkConfig(),
                          "12 settings: 3 features x spurious classes {nine, three} x V in {0.8, 0.95}; "
                          "3,000 images x 5 epochs, 1,000 eval images (~20 min on 2 shared cores)"),
    "paper": GridPreset(_FEATURES, DIGIT_CLASSES, (0.7, 0.8, 0.9, 0.95, 0.99), (0,),
                        BenchmarkConfig(n_train=10000, n_eval=2000, epochs=5),
                        "the reference's 50 settings per feature: 10 classes x V in {0.7, 0.8, 0.9, 0.95, 0.99}; "
                        "10,000 images"),
}


def _row(result) -> dict[str, Any]:
    top = result.top
    return {"ranked_regions": [int(r) for r in result.ranked_regions()],
            "class": top.class_name if top is not None else None, "n_features": len(result.features)}


class _RegisteredMethods(Mapping):
    """Live view of :mod:`ravl.discovery.registry`: name -> fn(inputs, random_state) -> row dict.

    Methods a user registers with :func:`ravl.discovery.registry.register_discovery_method` are
    benchmarked with no change here (under Ray too: the callables are resolved in the calling
    process and shipped with each task).
    """

    def __getitem__(self, name: str) -> Callable[..., dict[str, Any]]:
        return _RowMethod(get_discovery_method(name))

    def __iter__(self) -> Iterator[str]:
        return iter(list_discovery_methods())

    def __len__(self) -> int:
        return len(list_discovery_methods())


@dataclass(frozen=True)
class _RowMethod:
    """A registered discovery callable turned into ``fn(inputs, random_state) -> row dict`` (picklable)."""

    fn: Callable[..., Any]

    def __call__(self, inputs, random_state: int = 0) -> dict[str, Any]:
        return _row(self.fn(inputs, random_state=random_state))


#: name -> fn(inputs, random_state) -> {"ranked_regions", "class", "n_features"}; includes user-registered methods.
DISCOVERY_METHODS: Mapping[str, Callable[..., dict[str, Any]]] = _RegisteredMethods()


def method_adaptation(name: str) -> str:
    """How a registered method reaches ranked regions: ``"RaVL"``, ``"A"``, ``"B"``, ``"-"`` (random) or ``"?"``.

    ``"A"`` = image-then-region (the bare baseline names), ``"B"`` = region-as-sample
    (``*_region``); read from the registered ``adaptation`` default (docs/baselines.md).
    """
    if name in RAVL_METHODS:
        return "RaVL"
    if name == "random":
        return "-"
    try:
        info = discovery_method_info(name)
    except UnknownNameError:
        return "?"
    return {"image": "A", "region": "B"}.get(info.defaults.get("adaptation"), "?")


def _precision(ranked: Sequence[int], attributes: Sequence[str], feature: str, k: int) -> float:
    return float(precision_at_k([attributes[i] for i in ranked], feature, k=k))


@dataclass(frozen=True)
class SettingResult:
    """What one setting produced: result rows (deterministic values) and their wall-clock timings.

    Attributes:
        rows: One dict per method run, the ``results.jsonl`` rows (no timing field).
        timings: One dict per method run: ``setting``, ``method``, ``method_seconds``,
            ``setup_seconds`` (data, fine-tuning, validity and inputs, 0-ish when cached),
            ``stages`` (seconds per setup stage), ``built`` (whether the model was trained in
            this call), ``threads``, ``host`` and ``pid``.
    """

    rows: tuple[dict[str, Any], ...] = ()
    timings: tuple[dict[str, Any], ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {"rows": [dict(r) for r in self.rows], "timings": [dict(t) for t in self.timings]}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SettingResult:
        """Inverse of :meth:`to_dict`."""
        return cls(tuple(d.get("rows", ())), tuple(d.get("timings", ())))


def run_setting(spec: SettingSpec, work_dir: str | os.PathLike, config: BenchmarkConfig = BenchmarkConfig(), *,
                methods: Sequence[str] = ("ravl",), progress: bool = False,
                done: set[tuple[str, str]] | None = None) -> SettingResult:
    """Build, fine-tune, check validity and run ``methods`` on one setting.

    Runs with ``config.threads`` torch / BLAS / OpenMP threads (restored afterwards) and holds an
    exclusive lock on ``work_dir/<spec.key>/.lock`` meanwhile, so two processes never build the
    same setting folder at once. Rows of ``(spec.key, method)`` pairs listed in ``done`` are skipped.
    """
    done = done or set()
    todo = tuple((m, DISCOVERY_METHODS[m]) for m in methods if (spec.key, m) not in done)
    return _run_setting(spec, Path(work_dir), config, todo, progress=progress)


def _run_setting(spec: SettingSpec, work_dir: Path, config: BenchmarkConfig,
                 methods: Sequence[tuple[str, Callable[..., dict[str, Any]]]], *, progress: bool) -> SettingResult:
    if not methods:
        return SettingResult()
    work = work_dir / spec.key
    with file_lock(work / ".lock"), thread_limits(config.threads):
        return _compute_setting(spec, work, config, methods, progress=progress)


def _compute_setting(spec: SettingSpec, work: Path, config: BenchmarkConfig,
                     methods: Sequence[tuple[str, Callable[..., dict[str, Any]]]], *, progress: bool
                     ) -> SettingResult:
    stages: dict[str, float] = {}
    t0 = t = time.monotonic()

    def lap(name: str) -> None:
        nonlocal t
        now = time.monotonic()
        stages[name] = round(now - t, 3)
        t = now

    setting = make_spurious_benchmark(work / "setting", spurious_class=spec.spurious_class, feature=spec.feature,
                                      cramers_v=spec.cramers_v, n_train=config.n_train, n_eval=config.n_eval,
                                      source=config.source, layout=config.layout, random_state=spec.seed,
                                      progress=progress)
    lap("data")
    built = not (work / "model" / STATE_FILE).exists()
    init = grid_init_record(config.init, spec.seed)
    model = load_model(init["model"], **{k: v for k, v in init.items() if k != "model"})
    finetune(model, load_dataset(setting.train_dir), work / "model",
             FinetuneConfig(epochs=config.epochs, batch_size=config.batch_size, seed=spec.seed),
             progress=progress, init=init)
    lap("finetune")
    ev = load_dataset(setting.eval_dir)
    vpath = work / "validity.json"
    if vpath.exists():
        validity = read_json(vpath)
    else:
        val = evaluate(model, ev, split="val", templates=CAPTION_TEMPLATES, spurious_feature=spec.feature,
                       regions=False, progress=progress)
        validity = check_setting_validity(val, setting.spurious_class, min_gap=config.min_gap).to_dict()
        atomic_write_json(vpath, validity)
    lap("validity")
    ipath = work / "inputs.npz"
    if ipath.exists():
        inputs = DiscoveryInputs.load(ipath)
    else:
        inputs = discovery_inputs(model, ev, split="val", templates=CAPTION_TEMPLATES,
                                  region_mode=config.region_mode, progress=progress)
        inputs.save(ipath)
    lap("inputs")
    setup_s = round(time.monotonic() - t0, 3)
    rows, timings = [], []
    for name, method in methods:
        t1 = time.monotonic()
        with warnings.catch_warnings():
            # umap-learn warns on every seeded fit that it runs single-threaded; George seeds it on purpose.
            warnings.filterwarnings("ignore", message="n_jobs value .* overridden to 1 by setting random_state",
                                    category=UserWarning)
            out = method(inputs, random_state=spec.seed)
        seconds = round(time.monotonic() - t1, 3)
        rows.append({"setting": spec.key, **asdict(spec), "method": name, "achieved_v": setting.achieved_v,
                     "valid": bool(validity["valid"]), "validity_gap": validity["gap"],
                     "precision_at_10": _precision(out["ranked_regions"], inputs.region_attributes,
                                                   spec.feature, config.k),
                     "class": out["class"], "class_correct": out["class"] == spec.spurious_class,
                     "n_features": out["n_features"], "n_regions": len(inputs.region_embeddings)})
        timings.append({"setting": spec.key, "method": name, "method_seconds": seconds, "setup_seconds": setup_s,
                        "stages": dict(stages), "built": built, "threads": config.threads,
                        "host": socket.gethostname(), "pid": os.getpid()})
    return SettingResult(tuple(rows), tuple(timings))


@dataclass(frozen=True)
class _SettingTask:
    """One unit of work for :func:`ravl.utils.tasks.run_tasks` (picklable)."""

    spec: SettingSpec
    work_dir: str
    config: BenchmarkConfig
    methods: tuple[tuple[str, Callable[..., dict[str, Any]]], ...]


def _setting_task(task: _SettingTask) -> SettingResult:
    """The per-setting function shipped to the execution backend."""
    return _run_setting(task.spec, Path(task.work_dir), task.config, task.methods, progress=False)


def _canonical(rows: Sequence[dict[str, Any]], specs: Sequence[SettingSpec], methods: Sequence[str]
               ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(rows of specs x methods in grid order x method order, every other row sorted by setting, method).

    The first row of each (setting, method) pair wins; timing fields of old files are dropped.
    """
    by_pair: dict[tuple[str, str], dict[str, Any]] = {}
    for r in rows:
        by_pair.setdefault((r["setting"], r["method"]), {k: v for k, v in r.items() if k not in TIMING_FIELDS})
    ordered = [by_pair.pop((s.key, m)) for s in specs for m in methods if (s.key, m) in by_pair]
    rest = [by_pair[p] for p in sorted(by_pair)]
    return ordered, rest


def run_grid(specs: Sequence[SettingSpec], work_dir: str | os.PathLike, config: BenchmarkConfig = BenchmarkConfig(),
             *, methods: Sequence[str] = ("ravl",), progress: bool = True, backend: str = "serial",
             num_workers: int | None = None, ray_address: str | None = None) -> list[dict[str, Any]]:
    """Run every setting (resuming from ``work_dir/results.jsonl``) and return all rows, in grid x method order.

    Args:
        specs: The settings (duplicates are run once).
        work_dir: Work folder (layout in the module docstring).
        config: Shared sizes and budget; a folder holds the runs of one configuration.
        methods: Registered discovery method names, in the order rows are written.
        progress: Progress bar over settings.
        backend: ``"serial"`` or ``"ray"`` (see :func:`ravl.utils.tasks.run_tasks`).
        num_workers: Ray: settings run at once (default: CPUs / ``config.threads``).
        ray_address: Ray: address of an existing cluster (default: a private local instance).

    Returns:
        The rows of ``specs`` x ``methods``, in that order; ``results.jsonl`` holds them in the
        same order (followed by rows of other settings or methods computed earlier in the folder).

    Raises:
        CheckpointError: ``work_dir`` holds a run with another configuration, or another process
            is running a grid in it.
    """
    methods = list(dict.fromkeys(methods))
    resolved = {m: DISCOVERY_METHODS[m] for m in methods}  # unknown names fail here, before any work
    specs = list({s.key: s for s in specs}.values())
    work = Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    with output_lock(work, "ravl benchmark discover"):
        res_path, tim_path = work / "results.jsonl", work / "timings.jsonl"
        rows = read_rows(res_path)
        check_config_file(work / "benchmark_config.json", config.to_dict(), has_results=bool(rows))
        done = {(r["setting"], r["method"]) for r in rows}
        tasks = [_SettingTask(s, str(work), config, tuple((m, resolved[m]) for m in methods if (s.key, m) not in done))
                 for s in specs]
        tasks = [t for t in tasks if t.methods]
        if tasks:
            logger.info("%d of %d settings to run (%s backend).", len(tasks), len(specs), backend)
        for _, result in run_tasks(_setting_task, tasks, backend=backend, num_workers=num_workers,
                                   ray_address=ray_address, threads=config.threads, progress=progress,
                                   desc="settings"):
            append_jsonl(res_path, result.rows)
            append_jsonl(tim_path, result.timings)
            rows.extend(result.rows)
        ordered, rest = _canonical(rows, specs, methods)
        text = "".join(json.dumps(r) + "\n" for r in ordered + rest)
        if not res_path.exists() or res_path.read_text(encoding="utf-8") != text:
            atomic_write_text(res_path, text)
    return ordered


def summarize(rows: Sequence[dict[str, Any]], *, valid_only: bool = True, by: str = "cramers_v"
              ) -> list[dict[str, Any]]:
    """Mean P@10 (95 % CI) and class accuracy per method and per ``by`` value, plus 'all'."""
    out = []
    use = [r for r in rows if r["valid"] or not valid_only]
    for m in dict.fromkeys(r["method"] for r in use):
        mr = [r for r in use if r["method"] == m]
        groups = sorted({r[by] for r in mr}) + ["all"]
        for g in groups:
            gr = mr if g == "all" else [r for r in mr if r[by] == g]
            mean, half, n = mean_ci([r["precision_at_10"] for r in gr])
            out.append({"method": m, by: g, "p_at_10": mean, "ci95": half, "n_settings": n,
                        "class_accuracy": float(np.mean([r["class_correct"] for r in gr])) if gr else float("nan")})
    return out


#: The paper's Table 2 rows: (method, variant, S_c filter, H_c >= 0.25 filter, ranked by, balance weight w).
ABLATIONS = (("ravl_gap_only", "gap only", "yes", "no", "G_c", "yes"),
             ("ravl_influence_only", "influence only", "no", "yes", "H_c", "yes"),
             ("ravl_unweighted", "unweighted gap", "yes", "yes", "G_c", "no (w = 1)"),
             ("ravl", "RaVL (full)", "yes", "yes", "G_c", "yes"))


def summary_tables(rows: Sequence[dict[str, Any]], *, methods: Sequence[str] | None = None,
                   wall_seconds: float | None = None, config: BenchmarkConfig | None = None) -> dict[str, Any]:
    """Everything ``summary.md`` shows, as a JSON-ready dict (``summary.json``;
    :func:`ravl.report.tables.format_discovery_summary` renders it).

    Keys: ``n_settings``, ``n_valid``, ``min_gap``, ``strengths``, ``methods`` (name, adaptation,
    per-strength and overall mean P@10 with 95 % CI half-width and n, class accuracy),
    ``ablation`` (the Table 2 rows present in ``rows``), ``closest_baseline`` (best non-RaVL,
    non-random method overall and RaVL's ratio to it), ``wall_seconds`` and ``config``.
    NaN is written as ``null``.
    """
    methods = list(dict.fromkeys(methods if methods is not None else (r["method"] for r in rows)))
    rows = [r for r in rows if r["method"] in methods]
    summary = summarize(rows)
    strengths = sorted({r["cramers_v"] for r in rows})

    def cell(s: dict[str, Any] | None) -> dict[str, Any]:
        if s is None:
            return {"p_at_10": None, "ci95": None, "n": 0, "class_accuracy": None}
        return {"p_at_10": nan_to_none(s["p_at_10"]), "ci95": nan_to_none(s["ci95"]), "n": s["n_settings"],
                "class_accuracy": nan_to_none(s["class_accuracy"])}

    def find(m: str, v: Any) -> dict[str, Any] | None:
        return next((s for s in summary if s["method"] == m and s["cramers_v"] == v), None)

    table = [{"method": m, "adaptation": method_adaptation(m),
              "by_strength": {f"{v:g}": cell(find(m, v)) for v in strengths}, "all": cell(find(m, "all"))}
             for m in methods]
    names = {a[0]: a for a in ABLATIONS}
    ablation = [{"method": m, "variant": names[m][1], "spurious_filter": names[m][2], "influence_filter": names[m][3],
                 "ranked_by": names[m][4], "balance_weight": names[m][5], **next(t for t in table if t["method"] == m)}
                for m, *_ in ABLATIONS if m in methods]
    ravl_all = next((t["all"]["p_at_10"] for t in table if t["method"] == "ravl"), None)
    others = [t for t in table if t["method"] not in RAVL_METHODS and t["method"] != "random"
              and t["all"]["p_at_10"] is not None]
    closest = None
    if others:
        best = max(others, key=lambda t: t["all"]["p_at_10"])
        ratio = (ravl_all / best["all"]["p_at_10"]) if ravl_all is not None and best["all"]["p_at_10"] else None
        closest = {"method": best["method"], "adaptation": best["adaptation"], "p_at_10": best["all"]["p_at_10"],
                   "ravl_ratio": ratio}
    return {"n_settings": len({r["setting"] for r in rows}), "n_valid": len({r["setting"] for r in rows if r["valid"]}),
            "min_gap": config.min_gap if config else None, "strengths": [f"{v:g}" for v in strengths],
            "methods": table, "ablation": ablation, "closest_baseline": closest, "wall_seconds": wall_seconds,
            "config": config.to_dict() if config else None}
