"""The discovery benchmark: a grid of controlled settings, one fine-tuned model per setting.

For each setting (feature x spurious class x Cramér's V x seed) the runner builds the data
(:func:`ravl.make_spurious_benchmark`), fine-tunes the tiny CLIP with the standard contrastive
loss, applies the validity rule on the evaluation ``val`` split, computes the discovery inputs
once (region embeddings and zero-shot scores) and runs every requested discovery method on them,
scoring Precision@10 of the top feature against the planted ``region_attributes``.

Everything is cached under the work folder (setting, checkpoint, inputs ``.npz``) and every
(setting, method) row is appended to ``results.jsonl`` as soon as it is known, so an interrupted
run resumes where it stopped and a finished one is not recomputed.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["SettingSpec", "BenchmarkConfig", "grid", "run_setting", "run_grid", "summarize", "DISCOVERY_METHODS"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SettingSpec:
    """One controlled setting of the grid."""

    feature: str
    spurious_class: str
    cramers_v: float
    seed: int = 0

    @property
    def key(self) -> str:
        return f"{self.feature}-{self.spurious_class}-v{self.cramers_v:g}-s{self.seed}"


@dataclass(frozen=True)
class BenchmarkConfig:
    """Sizes and training budget shared by every setting of a grid."""

    n_train: int = 4000
    n_eval: int = 2000
    epochs: int = 5
    batch_size: int = 128
    source: str = "sklearn"
    min_gap: float = 0.1
    k: int = 10
    region_mode: str | None = None


def grid(features: Sequence[str], spurious_classes: Sequence[str], strengths: Sequence[float],
         seeds: Sequence[int] = (0,)) -> list[SettingSpec]:
    """All combinations, in a stable order."""
    return [SettingSpec(f, c, float(v), int(s))
            for f, c, v, s in itertools.product(features, spurious_classes, strengths, seeds)]


def _row(result) -> dict[str, Any]:
    top = result.top
    return {"ranked_regions": [int(r) for r in result.ranked_regions()],
            "class": top.class_name if top is not None else None, "n_features": len(result.features)}


class _RegisteredMethods(Mapping):
    """Live view of :mod:`ravl.discovery.registry`: name -> fn(inputs, random_state) -> row dict.

    Methods a user registers with :func:`ravl.discovery.registry.register_discovery_method` are
    benchmarked with no change here.
    """

    def __getitem__(self, name: str) -> Callable[..., dict[str, Any]]:
        from ravl.discovery.registry import get_discovery_method

        fn = get_discovery_method(name)

        def run(inputs, random_state: int = 0) -> dict[str, Any]:
            return _row(fn(inputs, random_state=random_state))

        return run

    def __iter__(self) -> Iterator[str]:
        from ravl.discovery.registry import list_discovery_methods

        return iter(list_discovery_methods())

    def __len__(self) -> int:
        from ravl.discovery.registry import list_discovery_methods

        return len(list_discovery_methods())


#: name -> fn(inputs, random_state) -> {"ranked_regions", "class", "n_features"}; includes user-registered methods.
DISCOVERY_METHODS: Mapping[str, Callable[..., dict[str, Any]]] = _RegisteredMethods()


def _precision(ranked: Sequence[int], attributes: Sequence[str], feature: str, k: int) -> float:
    from ravl.discovery import precision_at_k

    return float(precision_at_k([attributes[i] for i in ranked], feature, k=k))


def run_setting(spec: SettingSpec, work_dir: str | os.PathLike, config: BenchmarkConfig = BenchmarkConfig(), *,
                methods: Sequence[str] = ("ravl",), progress: bool = False,
                done: set[tuple[str, str]] | None = None) -> list[dict[str, Any]]:
    """Build, fine-tune, check validity and run ``methods`` on one setting; returns result rows.

    Rows of ``(spec.key, method)`` pairs listed in ``done`` are skipped.
    """
    from ravl.data.dataset import load_dataset
    from ravl.data.synthetic import CAPTION_TEMPLATES, make_spurious_benchmark
    from ravl.discovery.pipeline import DiscoveryInputs, discovery_inputs
    from ravl.evaluation.metrics import check_setting_validity, evaluate
    from ravl.models import load_model
    from ravl.training.loop import FinetuneConfig, finetune
    from ravl.utils.io import atomic_write_json, read_json

    done = done or set()
    todo = [m for m in methods if (spec.key, m) not in done]
    if not todo:
        return []
    work = Path(work_dir) / spec.key
    t0 = time.monotonic()
    setting = make_spurious_benchmark(work / "setting", spurious_class=spec.spurious_class, feature=spec.feature,
                                      cramers_v=spec.cramers_v, n_train=config.n_train, n_eval=config.n_eval,
                                      source=config.source, random_state=spec.seed, progress=progress)
    model = load_model("tiny", seed=spec.seed)
    finetune(model, load_dataset(setting.train_dir), work / "model",
             FinetuneConfig(epochs=config.epochs, batch_size=config.batch_size, seed=spec.seed),
             progress=progress, init={"model": "tiny", "seed": spec.seed, "checkpoint": None})
    ev = load_dataset(setting.eval_dir)
    vpath = work / "validity.json"
    if vpath.exists():
        validity = read_json(vpath)
    else:
        val = evaluate(model, ev, split="val", templates=CAPTION_TEMPLATES, spurious_feature=spec.feature,
                       regions=False, progress=progress)
        validity = check_setting_validity(val, setting.spurious_class, min_gap=config.min_gap).to_dict()
        atomic_write_json(vpath, validity)
    ipath = work / "inputs.npz"
    if ipath.exists():
        inputs = DiscoveryInputs.load(ipath)
    else:
        inputs = discovery_inputs(model, ev, split="val", templates=CAPTION_TEMPLATES,
                                  region_mode=config.region_mode, progress=progress)
        inputs.save(ipath)
    prep_s = time.monotonic() - t0
    rows = []
    for m in todo:
        t1 = time.monotonic()
        out = DISCOVERY_METHODS[m](inputs, random_state=spec.seed)
        rows.append({"setting": spec.key, **asdict(spec), "method": m, "achieved_v": setting.achieved_v,
                     "valid": bool(validity["valid"]), "validity_gap": validity["gap"],
                     "precision_at_10": _precision(out["ranked_regions"], inputs.region_attributes,
                                                   spec.feature, config.k),
                     "class": out["class"], "class_correct": out["class"] == spec.spurious_class,
                     "n_features": out["n_features"], "n_regions": len(inputs.region_embeddings),
                     "method_seconds": round(time.monotonic() - t1, 3), "setup_seconds": round(prep_s, 1)})
    return rows


def _read_rows(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line:
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:  # a line cut by an interruption: recomputed
                continue
    return rows


def run_grid(specs: Sequence[SettingSpec], work_dir: str | os.PathLike, config: BenchmarkConfig = BenchmarkConfig(),
             *, methods: Sequence[str] = ("ravl",), progress: bool = True) -> list[dict[str, Any]]:
    """Run every setting (resuming from ``work_dir/results.jsonl``) and return all rows."""
    from ravl.utils.progress import progress as bar

    from ravl.exceptions import CheckpointError
    from ravl.utils.io import atomic_write_json, read_json

    work = Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    cfg_path = work / "benchmark_config.json"
    if cfg_path.exists() and read_json(cfg_path) != asdict(config):
        raise CheckpointError(f"{work} holds a benchmark run with another configuration ({read_json(cfg_path)}); "
                              "use another --out folder to run this one.")
    atomic_write_json(cfg_path, asdict(config))
    res_path = work / "results.jsonl"
    rows = _read_rows(res_path)
    done = {(r["setting"], r["method"]) for r in rows}
    for spec in bar(specs, desc="settings", disable=None if progress else True, leave=True):
        new = run_setting(spec, work, config, methods=methods, progress=False, done=done)
        if new:
            with open(res_path, "a", encoding="utf-8") as fh:
                for r in new:
                    fh.write(json.dumps(r) + "\n")
                fh.flush()
                os.fsync(fh.fileno())
            rows.extend(new)
            done |= {(r["setting"], r["method"]) for r in new}
    keys = {s.key for s in specs}
    return [r for r in rows if r["setting"] in keys and r["method"] in methods]


def _mean_ci(x: Sequence[float]) -> tuple[float, float, int]:
    """Mean and 95 % t-interval half-width."""
    from scipy import stats

    a = np.asarray(x, dtype=float)
    n = len(a)
    if n == 0:
        return float("nan"), float("nan"), 0
    if n == 1:
        return float(a[0]), float("nan"), 1
    half = float(stats.t.ppf(0.975, n - 1) * a.std(ddof=1) / np.sqrt(n))
    return float(a.mean()), half, n


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
            mean, half, n = _mean_ci([r["precision_at_10"] for r in gr])
            out.append({"method": m, by: g, "p_at_10": mean, "ci95": half, "n_settings": n,
                        "class_accuracy": float(np.mean([r["class_correct"] for r in gr])) if gr else float("nan")})
    return out
