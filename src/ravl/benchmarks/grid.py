"""What every benchmark grid shares: the settings, the work-folder bookkeeping and the statistics.

A grid is a list of :class:`SettingSpec` (feature x spurious class x Cramér's V x seed, see
:func:`grid`); runners cache every step under a work folder, append finished rows to
``results.jsonl`` (:func:`append_jsonl`, :func:`read_rows`), lock a setting's folder while they
build it (:func:`file_lock`) and fix the thread count of each setting (:func:`thread_limits`) so
results do not depend on the process or backend that computed them.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats
from threadpoolctl import threadpool_limits

from ravl.exceptions import CheckpointError, InvalidParameterError
from ravl.utils.io import atomic_write_json, read_json

__all__ = ["SettingSpec", "grid", "check_config_file", "strict_from_dict", "thread_limits", "file_lock", "read_rows", "append_jsonl",
           "mean_ci", "nan_to_none", "GRID_INITS", "grid_init_record"]

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

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SettingSpec:
        """Inverse of :meth:`to_dict`."""
        return cls(**{f.name: d[f.name] for f in fields(cls) if f.name in d})


#: Starting points of a grid's fine-tunings: fresh seeded weights, or the tiny CLIP's shipped
#: pretrained weights (``load_model("tiny", pretrained="synthetic")``, the paper's protocol).
GRID_INITS = ("scratch", "pretrained")


def grid_init_record(init: str, seed: int) -> dict[str, Any]:
    """The ``load_model`` arguments (a checkpoint's ``"init"`` record) of a grid setting's start."""
    if init not in GRID_INITS:
        raise InvalidParameterError(f"Unknown grid start {init!r}; choose one of {list(GRID_INITS)}.")
    record: dict[str, Any] = {"model": "tiny", "seed": int(seed), "checkpoint": None}
    if init == "pretrained":
        record["pretrained"] = "synthetic"
    return record


def grid_layout(value: Mapping[str, Any] | None, where: str = "layout") -> dict[str, Any]:
    """A grid's image layout as the fields of :class:`ravl.data.synthetic.SyntheticLayout` that
    differ from the default (``{}``: the default 2 x 2 grid), checked.

    Example:
        >>> grid_layout({"grid_size": 3, "distractors": 0, "placement": "random"})
        {'grid_size': 3}
    """
    from ravl.data.synthetic import SyntheticLayout

    layout = SyntheticLayout.coerce(dict(value or {}), where=where)
    default = SyntheticLayout().to_dict()
    return {k: v for k, v in layout.to_dict().items() if v != default[k]}


def describe_grid_layout(layout: Mapping[str, Any] | None) -> str:
    """One line for a grid's layout, e.g. ``"2x2 grid, feature in any free cell"``."""
    from ravl.data.synthetic import SyntheticLayout

    return SyntheticLayout.coerce(dict(layout or {})).describe()


def strict_from_dict(cls, d: Mapping[str, Any]):
    """``cls(**d)`` for a config dataclass, naming unknown keys (e.g. a folder from another version)."""
    names = {f.name for f in fields(cls)}
    extra = sorted(set(d) - names)
    if extra:
        raise InvalidParameterError(f"Unknown {cls.__name__} field(s) {extra}; known: {sorted(names)}.")
    return cls(**d)


def grid(features: Sequence[str], spurious_classes: Sequence[str], strengths: Sequence[float],
         seeds: Sequence[int] = (0,)) -> list[SettingSpec]:
    """All combinations, in a stable order."""
    return [SettingSpec(f, c, float(v), int(s))
            for f, c, v, s in itertools.product(features, spurious_classes, strengths, seeds)]


@contextlib.contextmanager
def thread_limits(n: int) -> Iterator[None]:
    """Torch intra-op threads, BLAS and OpenMP pools set to ``n``; the previous counts restored after."""
    import torch  # imported here: ravl.benchmarks.grid is read by summaries that need no torch
    old = torch.get_num_threads()
    with threadpool_limits(limits=n):
        torch.set_num_threads(n)
        try:
            yield
        finally:
            torch.set_num_threads(old)


@contextlib.contextmanager
def file_lock(path: Path, *, blocking: bool = True) -> Iterator[bool]:
    """An exclusive ``flock`` on ``path`` (released when the process dies); yields whether it is held.

    Without ``fcntl`` (Windows) no lock is taken and ``True`` is yielded.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield True
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def read_rows(path: Path) -> list[dict[str, Any]]:
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


def append_jsonl(path: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    with open(path, "a", encoding="utf-8") as fh:
        for r in rows:
            fh.write(json.dumps(r) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def mean_ci(x: Sequence[float]) -> tuple[float, float, int]:
    """Mean and 95 % t-interval half-width (``nan`` when undefined) and n."""
    a = np.asarray(x, dtype=float)
    n = len(a)
    if n == 0:
        return float("nan"), float("nan"), 0
    if n == 1:
        return float(a[0]), float("nan"), 1
    half = float(stats.t.ppf(0.975, n - 1) * a.std(ddof=1) / np.sqrt(n))
    return float(a.mean()), half, n


def nan_to_none(x: float) -> float | None:
    """``None`` for NaN (JSON has no NaN), else ``float(x)``."""
    return None if x != x else float(x)


def check_config_file(path: Path, config: dict[str, Any], *, has_results: bool) -> None:
    """Write a grid's ``benchmark_config.json``, refusing another configuration's finished rows.

    A folder holds the results of one configuration. A folder whose config differs but which
    holds no result yet (a run that failed before finishing a setting, e.g. on a bad option) is
    simply taken over, so the corrected command is not blocked.

    Raises:
        CheckpointError: ``path`` records another configuration and the folder holds results.
    """
    old = None
    if path.exists():
        try:
            old = read_json(path)
        except (OSError, ValueError):
            old = None
        if old != config and has_results:
            raise CheckpointError(f"{path.parent} holds the results of a benchmark run with another configuration "
                                  f"({old}); use another --out folder to run this one.")
    if old != config:
        atomic_write_json(path, config)
