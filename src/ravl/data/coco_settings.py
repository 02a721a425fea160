"""Real-world spurious-correlation settings from COCO (the RaVL paper's COCO settings).

A folder written by :func:`ravl.data.coco.convert_coco` is a *pool* of labelled, captioned
images whose boxes name the COCO category they show. :func:`make_coco_setting` samples from it,
for one class (``spurious_class``) and one COCO category that is not a class
(``feature_category``, e.g. ``"frisbee"`` for ``"dog"``):

- a **fine-tuning set** (``train/``, splits ``train`` and ``val``) in which membership of
  ``spurious_class`` and the presence of an object of ``feature_category`` are tied with a target
  Cramér's V (the C x 2 table, as in :mod:`ravl.data.synthetic`);
- an **evaluation set** (``eval/``, splits ``val`` for discovery and ``test`` for metrics,
  stratified by class x feature) in which they are independent: every class has as many images
  with the feature as without (p = 0.5 exactly, so V = 0);
- ``setting.json`` (a :class:`CocoSetting`: target and achieved V, both tables, the pool's table).

How the sets are drawn (every draw from seeded local generators; the same seed gives the same
files):

1. **Pool**: the rows with a ``caption`` (fine-tuning needs one; the others are not used). An
   image *has the feature* when any of its ``region_attributes`` is ``feature_category``.
2. **Evaluation set first**: per class ``m`` images with the feature and ``m`` without, where
   ``m`` is at most half of the class's scarcer cell (``min(with, without) // 2``, at least 1),
   so the fine-tuning set keeps the rest. With ``n_eval`` the classes are balanced
   (``m`` about ``n_eval / (2C)``, capped as said; an odd ``n_eval`` gives one image less; a
   class whose cap bites gets fewer images, with a warning); without it every class gets the
   largest ``m`` that all classes allow.
3. **Fine-tuning table**: balanced classes of ``k`` images (``n_train / C``; without
   ``n_train`` the largest ``k`` the rest of the pool allows). It starts from the strongest
   association the pool allows (the spurious class with the feature, the others without, as far
   as there are images; the spurious class must stay at least half with the feature and every other
   class at most half, so the association points the planted way) and moves images toward
   independence with the synthetic builder's steps
   (:func:`ravl.data.synthetic.make_contingency_table`: coarse steps of 1-3 images per class, then
   single moves until chi2 <= V^2 N), never using more images of a cell than the pool has left.
   The target is reached when the achieved V is within :data:`V_TOLERANCE` (0.02) of it;
   otherwise, with ``n_train`` given, the error says the largest ``n_train`` that reaches it.
   Without ``n_train``, ``k`` is the largest size (a geometric then binary search from the
   smallest class's availability) whose start is at least as strong as the target and that
   reaches it; the V then lands a few thousandths below the target when the pool has images to
   spare, and at most 0.02 above it when the scarce cells run out first (low targets).
4. **Splits**: ``val_fraction`` of the fine-tuning set (stratified by class x feature) is split
   ``val``; the evaluation set is halved into ``val`` and ``test``, stratified the same way.

Images are hard-linked from the pool (copied when linking fails; ``images="copy"`` or
``"symlink"`` otherwise) under the same ``images/...`` names; rows are written in random order
with the pool row's fields (``coco_id`` and ``coco_captions`` included) plus ``split`` and
``has_feature``. The folders are built in a staging folder and swapped into place, ``setting.json``
last, with the synthetic builder's helpers.

:func:`list_coco_pairs` ranks candidate (class, category) pairs by their natural association in
the pool, to choose a setting.

Example:
    >>> setting = make_coco_setting("coco-val", "runs/dog-frisbee", spurious_class="dog",
    ...                             feature_category="frisbee", cramers_v=0.9)  # doctest: +SKIP
    >>> print(setting.summary())  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import shutil
import time
import uuid
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ravl.data.attributes import EMPTY_ATTRIBUTE
from ravl.data.coco import IMAGE_MODES, _place_file
from ravl.data.dataset import RegionDataset, _list_names, _suggest, load_dataset, write_classes, write_metadata
from ravl.data.synthetic import (
    _STAGING_PREFIX,
    CONTINGENCY_COLUMNS,
    SETTING_FILE,
    _approach_target,
    _check_out_dir,
    _resolve_seed,
    _stratified_pick,
    _swap_into_place,
    cramers_v_of,
)
from ravl.exceptions import DatasetError, InvalidParameterError, RavlWarning
from ravl.utils.io import atomic_write_json, read_json
from ravl.utils.outputs import locks_output
from ravl.utils.progress import progress as progress_bar
from ravl.utils.validation import check_choice, check_float, check_int

__all__ = [
    "V_TOLERANCE",
    "CocoSetting",
    "CocoPair",
    "make_coco_setting",
    "read_coco_setting",
    "list_coco_pairs",
    "format_coco_pairs",
]

logger = logging.getLogger(__name__)

#: How far the achieved Cramér's V may be from the target.
V_TOLERANCE = 0.02
#: Bumped whenever the same parameters and pool would give other files.
BUILDER_VERSION = 1
_CALLER = "make_coco_setting"
_FEW_PER_CLASS = 20  # fewer fine-tuning images per class than this: warn
_KIND = "coco"


# --------------------------------------------------------------------------------------------
# The setting record
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class CocoSetting:
    """One COCO setting: the ground truth of the sampled sets and where they are.

    Attributes:
        spurious_class: Class tied to the feature in the fine-tuning set.
        spurious_index: Its index in ``classes``.
        feature: The COCO category whose presence is the spurious feature (its region attribute).
        target_v: Cramér's V asked for.
        achieved_v: Cramér's V of the fine-tuning set's class x feature table.
        contingency: Fine-tuning set (train + val) table, ``[C][2]`` images without / with the
            feature per class (:data:`~ravl.data.synthetic.CONTINGENCY_COLUMNS`).
        eval_contingency: The same table for the evaluation set.
        eval_v: Cramér's V of the evaluation table (0: every class is half with the feature).
        pool_contingency: The same table for the pool (captioned rows of ``data_dir``).
        classes: Class names in label order.
        n_train: Images of the fine-tuning set (train + val).
        n_val: Of which split ``val``.
        n_eval: Images of the evaluation set (val + test).
        n_eval_val: Of which split ``val``.
        n_train_requested: ``n_train`` asked for (None: as many as the pool allows).
        n_eval_requested: ``n_eval`` asked for (None: as many as the pool allows).
        val_fraction: Fraction of the fine-tuning set split ``val``.
        seed: Integer seed that reproduces the build.
        data_dir: The pool folder.
        pool_fingerprint: BLAKE2b of the pool's ``metadata.jsonl`` (a changed pool is rebuilt).
        images_mode: How the images were placed (``hardlink``, ``copy``, ``symlink``).
        train_dir: Fine-tuning dataset folder.
        eval_dir: Evaluation dataset folder.
        builder_version: Version of the construction.
        kind: ``"coco"`` (synthetic settings have no such field).
    """

    spurious_class: str
    spurious_index: int
    feature: str
    target_v: float
    achieved_v: float
    contingency: tuple[tuple[int, int], ...]
    eval_contingency: tuple[tuple[int, int], ...]
    eval_v: float
    pool_contingency: tuple[tuple[int, int], ...]
    classes: tuple[str, ...]
    n_train: int
    n_val: int
    n_eval: int
    n_eval_val: int
    n_train_requested: int | None
    n_eval_requested: int | None
    val_fraction: float
    seed: int
    data_dir: Path
    pool_fingerprint: str
    images_mode: str
    train_dir: Path
    eval_dir: Path
    builder_version: int = BUILDER_VERSION
    kind: str = _KIND

    @property
    def contingency_table(self) -> np.ndarray:
        """``[C, 2]`` int64 fine-tuning table (without, with the feature)."""
        return np.asarray(self.contingency, dtype=np.int64).reshape(-1, 2)

    @property
    def root(self) -> Path:
        """The output folder (parent of ``train_dir``)."""
        return self.train_dir.parent

    def parameters(self) -> dict[str, Any]:
        """The arguments that determine the build (compared to decide whether to rebuild)."""
        return {"spurious_class": self.spurious_class, "feature": self.feature, "cramers_v": self.target_v,
                "n_train": self.n_train_requested, "n_eval": self.n_eval_requested, "val_fraction": self.val_fraction,
                "seed": self.seed, "data_dir": str(self.data_dir), "pool_fingerprint": self.pool_fingerprint,
                "images": self.images_mode, "builder_version": self.builder_version}

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (paths as strings, tables as lists)."""
        d = dataclasses.asdict(self)
        for k in ("contingency", "eval_contingency", "pool_contingency"):
            d[k] = [list(r) for r in getattr(self, k)]
        d["classes"] = list(self.classes)
        for k in ("data_dir", "train_dir", "eval_dir"):
            d[k] = str(getattr(self, k))
        d["contingency_columns"] = list(CONTINGENCY_COLUMNS)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CocoSetting:
        """Inverse of :meth:`to_dict` (unknown keys are ignored)."""
        names = {f.name for f in dataclasses.fields(cls)}
        kw = {k: v for k, v in d.items() if k in names}
        for k in ("contingency", "eval_contingency", "pool_contingency"):
            kw[k] = tuple(tuple(int(x) for x in r) for r in kw[k])
        kw["classes"] = tuple(kw["classes"])
        for k in ("data_dir", "train_dir", "eval_dir"):
            kw[k] = Path(kw[k])
        return cls(**kw)

    def summary(self) -> str:
        """Multi-line description: target and achieved V, the three tables, the paths."""
        t = self.contingency_table
        e = np.asarray(self.eval_contingency).reshape(-1, 2)
        p = np.asarray(self.pool_contingency).reshape(-1, 2)
        width = max(len(c) for c in self.classes) + 3
        lines = [f"setting: {self.feature!r} <-> {self.spurious_class!r}; Cramér's V target {self.target_v:.3f}, "
                 f"achieved {self.achieved_v:.4f} (evaluation set {self.eval_v:.4f}); pool {self.data_dir}, "
                 f"seed {self.seed}",
                 f"{'class':<{width}}{'pool: without':>14}{'with':>6}{'fine-tune: without':>20}{'with':>6}"
                 f"{'P(with)':>9}{'eval: without':>15}{'with':>6}"]
        for i, c in enumerate(self.classes):
            mark = " *" if i == self.spurious_index else ""
            n = t[i].sum()
            lines.append(f"{c + mark:<{width}}{p[i, 0]:>14}{p[i, 1]:>6}{t[i, 0]:>20}{t[i, 1]:>6}"
                         f"{(t[i, 1] / n if n else 0):>9.3f}{e[i, 0]:>15}{e[i, 1]:>6}")
        lines.append(f"{'total':<{width}}{p[:, 0].sum():>14}{p[:, 1].sum():>6}{t[:, 0].sum():>20}{t[:, 1].sum():>6}"
                     f"{t[:, 1].sum() / max(1, t.sum()):>9.3f}{e[:, 0].sum():>15}{e[:, 1].sum():>6}")
        lines.append("* spurious class")
        lines.append(f"fine-tuning set: {self.train_dir} ({self.n_train - self.n_val} train + {self.n_val} val)")
        lines.append(f"evaluation set:  {self.eval_dir} ({self.n_eval_val} val for discovery + "
                     f"{self.n_eval - self.n_eval_val} test for metrics)")
        return "\n".join(lines)


def read_coco_setting(path: str | os.PathLike) -> CocoSetting:
    """Read ``setting.json`` (or the folder holding it) written by :func:`make_coco_setting`.

    ``train_dir`` and ``eval_dir`` are re-based on the folder the file is in.

    Raises:
        DatasetError: When the file is missing or not a COCO setting.
    """
    p = Path(path)
    if p.is_dir():
        p = p / SETTING_FILE
    try:
        d = read_json(p)
        if d.get("kind") != _KIND:
            raise InvalidParameterError("no \"kind\": \"coco\" (a synthetic setting? read it with ravl.data.synthetic.read_setting)")
        s = CocoSetting.from_dict(d)
    except FileNotFoundError as exc:
        raise DatasetError(f"No {SETTING_FILE} at {p}; build the setting with make_coco_setting.") from exc
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise DatasetError(f"{p} is not a setting written by {_CALLER} ({type(exc).__name__}: {exc}).") from exc
    root = p.parent.absolute()
    return dataclasses.replace(s, train_dir=root / "train", eval_dir=root / "eval")


# --------------------------------------------------------------------------------------------
# The pool
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class _Pool:
    ds: RegionDataset
    rows: list[dict[str, Any]]   # the raw metadata row of each image of ds
    labels: np.ndarray           # [N] class index
    has_feature: np.ndarray      # [N] bool
    fingerprint: str

    def table(self) -> np.ndarray:
        c = len(self.ds.classes)
        return np.stack([np.bincount(self.labels[~self.has_feature], minlength=c),
                         np.bincount(self.labels[self.has_feature], minlength=c)], axis=1).astype(np.int64)


def _load_pool(data_dir: str | os.PathLike, caller: str) -> RegionDataset:
    if not isinstance(data_dir, (str, os.PathLike)):
        raise InvalidParameterError(f"The 'data_dir' parameter of {caller} must be a folder written by convert_coco. "
                         f"Got {data_dir!r} instead.")
    return load_dataset(data_dir, require_fields=("label", "region_attributes"), check_images=False)


def _raw_rows(ds: RegionDataset) -> tuple[list[dict[str, Any]], str]:
    data = ds.metadata_path.read_bytes()
    lines = data.split(b"\n")
    if lines and lines[0].startswith(b"\xef\xbb\xbf"):
        lines[0] = lines[0][3:]
    return [json.loads(lines[r.line - 1]) for r in ds.records], hashlib.blake2b(data, digest_size=16).hexdigest()


def _attribute_values(ds: RegionDataset) -> list[str]:
    return sorted({a for r in ds.records for a in (r.region_attributes or ())})


def _check_pair(ds: RegionDataset, spurious_class: Any, feature_category: Any) -> tuple[int, str]:
    classes = ds.classes
    if not isinstance(spurious_class, str) or spurious_class not in classes:
        close = _suggest(str(spurious_class), classes)
        hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        raise InvalidParameterError(f"The 'spurious_class' parameter of {_CALLER} must be one of the pool's classes "
                         f"{_list_names(classes)}. Got {spurious_class!r} instead.{hint}")
    values = [v for v in _attribute_values(ds) if v not in classes and v != EMPTY_ATTRIBUTE]
    if isinstance(feature_category, str) and feature_category in classes:
        raise InvalidParameterError(f"The 'feature_category' parameter of {_CALLER} must be a category that is not a "
                                    "class: "
                         f"{feature_category!r} is a class, so no image of another class shows it (convert_coco keeps "
                         "images with exactly one class category). Choose one of the other categories, e.g. "
                         f"{_list_names(values, 10)}.")
    if not isinstance(feature_category, str) or feature_category not in values:
        close = _suggest(str(feature_category), values)
        hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        raise InvalidParameterError(f"The 'feature_category' parameter of {_CALLER} must be a category in the pool's "
                         f"region_attributes ({_list_names(values)}). Got {feature_category!r} instead.{hint}")
    return classes.index(spurious_class), feature_category


# --------------------------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------------------------

def _eval_halves(pool_table: np.ndarray, n_eval: int | None, rng: np.random.Generator) -> np.ndarray:
    """``[C]`` images with (= without) the feature per class in the evaluation set."""
    cap = pool_table.min(axis=1) // 2
    cap = np.where(pool_table.min(axis=1) >= 1, np.maximum(cap, 1), 0)
    if n_eval is None:
        return np.full(pool_table.shape[0], int(cap.min()), dtype=np.int64)
    c = pool_table.shape[0]
    halves = np.full(c, (n_eval // 2) // c, dtype=np.int64)
    halves[rng.permutation(c)[: (n_eval // 2) % c]] += 1
    return np.minimum(halves, cap)


def _train_table(sizes: np.ndarray, avail: np.ndarray, s: int, target_v: float, seed: int, *,
                 from_above: bool = False) -> tuple[np.ndarray, float] | None:
    """Fine-tuning ``[C, 2]`` table with class totals ``sizes`` within ``avail``, or None if out of reach.

    Starts from the strongest association ``avail`` allows and approaches the target with the
    synthetic builder's steps; out of reach when the start is infeasible (more images of a cell
    than ``avail`` has, or the spurious class less than half with the feature, or another class
    more than half) or the achieved V misses the target by more than :data:`V_TOLERANCE`. With ``from_above`` the start must also be at
    least as strong as the target (then the steps land just below it, within a few thousandths).
    """
    rng = np.random.default_rng(seed)
    c = sizes.shape[0]
    table = np.zeros((c, 2), dtype=np.int64)
    direction = np.ones(c, dtype=np.int64)
    direction[s] = -1
    for i in range(c):
        n = int(sizes[i])
        if i == s:
            table[i, 1] = min(n, avail[i, 1])
            table[i, 0] = n - table[i, 1]
        else:
            table[i, 0] = min(n, avail[i, 0])
            table[i, 1] = n - table[i, 0]
    if (table > avail).any():
        return None
    # the association must point the planted way, as in the synthetic builder: the spurious class
    # at least half with the feature, every other class at most half
    others = np.arange(c) != s
    if 2 * table[s, 1] < sizes[s] or (2 * table[others, 1] > sizes[others]).any():
        return None
    # room: images each class may still move toward independence (never past half of the class)
    room = np.where(direction < 0, np.minimum(avail[:, 0] - table[:, 0], table[:, 1] - sizes // 2),
                    np.minimum(avail[:, 1] - table[:, 1], table[:, 0] - sizes // 2))
    room = np.maximum(room, 0)
    n_total = int(sizes.sum())
    if from_above and cramers_v_of(table) < target_v - 1e-9:
        return None
    moved = _approach_target(table, direction, room, target_v ** 2 * n_total * (1 + 1e-12), rng)
    achieved = cramers_v_of(moved)
    if abs(achieved - target_v) > V_TOLERANCE:
        return None
    return moved, achieved


def _class_sizes(n_train: int, c: int, rng_seed: int) -> np.ndarray:
    sizes = np.full(c, n_train // c, dtype=np.int64)
    sizes[np.random.default_rng(rng_seed).permutation(c)[: n_train % c]] += 1
    return sizes


def _largest_k(avail: np.ndarray, s: int, target_v: float, seed: int) -> tuple[int, np.ndarray, float] | None:
    """The largest balanced class size k (and its table) that reaches the target from above, or None."""
    c = avail.shape[0]

    def attempt(k: int):
        return _train_table(np.full(c, k, dtype=np.int64), avail, s, target_v, seed, from_above=True)

    k_hi = int(avail.sum(axis=1).min())
    if k_hi < 2:
        return None
    found = attempt(k_hi)
    if found is not None:
        return k_hi, *found
    bad, k = k_hi, k_hi
    good = None
    while k > 2:  # geometric search down for a size that works
        k = max(2, int(k * 0.8))
        found = attempt(k)
        if found is not None:
            good = (k, *found)
            break
        bad = k
    if good is None:
        return None
    lo, hi = good[0], bad  # attempt(lo) works, attempt(hi) does not
    while hi - lo > 1:
        mid = (lo + hi) // 2
        found = attempt(mid)
        if found is not None:
            lo, good = mid, (mid, *found)
        else:
            hi = mid
    return good


def _pick(cells: list[np.ndarray], counts: np.ndarray) -> np.ndarray:
    """Take ``counts[c, f]`` items from the front of each (shuffled) cell list, removing them."""
    out = []
    for ci in range(counts.shape[0]):
        for f in (0, 1):
            k = int(counts[ci, f])
            idx = cells[2 * ci + f]
            out.append(idx[:k])
            cells[2 * ci + f] = idx[k:]
    return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)


# --------------------------------------------------------------------------------------------
# The builder
# --------------------------------------------------------------------------------------------

@locks_output("out_dir", "make_coco_setting")
def make_coco_setting(data_dir: str | os.PathLike, out_dir: str | os.PathLike, *, spurious_class: str,
                      feature_category: str, cramers_v: float, n_train: int | None = None,
                      n_eval: int | None = None, val_fraction: float = 0.05, images: str = "hardlink",
                      random_state: Any = 0, progress: bool = True) -> CocoSetting:
    """Sample a COCO spurious-correlation setting from a pool written by ``convert_coco``.

    See the module docstring for the construction. A folder already holding a setting built with
    the same parameters from the same pool (same ``metadata.jsonl`` bytes) is returned as is.

    Args:
        data_dir: The pool: a dataset folder with ``label``, ``caption`` and ``region_attributes``
            (category names) on its rows, e.g. written by :func:`ravl.data.coco.convert_coco`.
        out_dir: Output folder (``train/``, ``eval/``, ``setting.json``).
        spurious_class: The class tied to the feature in the fine-tuning set.
        feature_category: The COCO category (a region attribute, not a class) whose presence is
            the spurious feature.
        cramers_v: Target Cramér's V of the fine-tuning set's class x feature table, in [0, 1].
        n_train: Fine-tuning images (train + val), balanced over the classes; None takes as
            many as the pool allows for the target.
        n_eval: Evaluation images (val + test); None takes as many as the pool allows with the
            classes balanced.
        val_fraction: Fraction of the fine-tuning set split ``val``, in [0, 0.5].
        images: ``"hardlink"`` (falls back to copying), ``"copy"`` or ``"symlink"``.
        random_state: Seed (an int makes the build reproducible and reusable), None or a numpy
            Generator.
        progress: Show a progress bar while placing images.

    Returns:
        The setting (also written to ``out_dir/setting.json``).

    Raises:
        ValueError: For an invalid parameter (unknown class or category, with close matches).
        DatasetError: When the pool cannot reach the target (the message says what it can), has
            no captions, misses one of the four (class, feature) groups for the evaluation set,
            or ``out_dir`` holds folders not made by a setting builder.
        DatasetValidationError: When the pool folder has problems.
    """
    cramers_v = check_float(cramers_v, "cramers_v", _CALLER, low=0.0, high=1.0)
    val_fraction = check_float(val_fraction, "val_fraction", _CALLER, low=0.0, high=0.5)
    images = check_choice(images, "images", _CALLER, IMAGE_MODES)
    seed, fixed = _resolve_seed(random_state, _CALLER)
    out_dir = Path(out_dir)
    ds = _load_pool(data_dir, _CALLER)
    c = len(ds.classes)
    if n_train is not None:
        n_train = check_int(n_train, "n_train", _CALLER, low=2 * c)
    if n_eval is not None:
        n_eval = check_int(n_eval, "n_eval", _CALLER, low=2 * c)
    s, feature = _check_pair(ds, spurious_class, feature_category)
    rows, fingerprint = _raw_rows(ds)

    params = {"spurious_class": spurious_class, "feature": feature, "cramers_v": cramers_v, "n_train": n_train,
              "n_eval": n_eval, "val_fraction": val_fraction, "seed": seed, "data_dir": str(ds.root),
              "pool_fingerprint": fingerprint, "images": images, "builder_version": BUILDER_VERSION}
    old, why = _existing(out_dir, params)
    if old is not None and fixed:
        logger.info("Setting in %s is up to date (same parameters and pool); not rebuilding.", out_dir)
        return old
    if why:
        logger.info("Rebuilding the setting in %s: %s.", out_dir, why)
    _check_out_dir(out_dir, _CALLER)

    t0 = time.perf_counter()
    keep = np.array([r.caption is not None for r in ds.records], dtype=bool)
    if not keep.any():
        raise DatasetError(f"No row of {ds.metadata_path} has a caption; the fine-tuning set needs them. Convert with "
                           "captions_json=... (convert_coco) or add \"caption\" to the rows.")
    if not keep.all():
        logger.info("Leaving out %d pool image(s) without a caption.", int((~keep).sum()))
    idx = np.flatnonzero(keep)
    labels = ds.label_indices[idx]
    has_feature = np.array([feature in (ds.records[i].region_attributes or ()) for i in idx], dtype=bool)
    pool = _Pool(ds, rows, labels, has_feature, fingerprint)
    pool_table = pool.table()
    streams = [int(x.generate_state(1)[0]) for x in np.random.SeedSequence(seed).spawn(5)]

    # 1. evaluation set: m with and m without per class
    short = [(ds.classes[i], int(pool_table[i, 0]), int(pool_table[i, 1])) for i in range(c)
             if pool_table[i].min() == 0]
    if short:
        listing = "; ".join(f"{name!r}: {wo} without, {w} with" for name, wo, w in short)
        raise DatasetError(f"The evaluation set needs, in every class, images with and without {feature!r}, but the "
                           f"pool (captioned rows of {ds.root}) has none in some cells ({listing}). Choose another "
                           "category (list_coco_pairs ranks them) or convert more images into the pool.")
    rng_eval = np.random.default_rng(streams[0])
    halves = _eval_halves(pool_table, n_eval, rng_eval)
    if n_eval is not None and 2 * int(halves.sum()) < n_eval - n_eval % 2:
        warnings.warn(f"The pool allows {2 * int(halves.sum())} evaluation images with each class half with "
                      f"{feature!r} (asked for {n_eval}): per class {dict(zip(ds.classes, (2 * halves).tolist()))}. "
                      "Each class gives at most half of its scarcer cell to the evaluation set.", RavlWarning,
                      stacklevel=2)
    e_table = np.stack([halves, halves], axis=1)
    avail = pool_table - e_table

    # 2. fine-tuning table
    if n_train is not None:
        sizes = _class_sizes(n_train, c, streams[1])
        found = _train_table(sizes, avail, s, cramers_v, streams[2])
        if found is None:
            best = _largest_k(avail, s, cramers_v, streams[2])
            raise DatasetError(_unreachable(ds, pool_table, avail, s, feature, cramers_v, n_train, best))
        table, achieved = found
    else:
        best = _largest_k(avail, s, cramers_v, streams[2])
        if best is None:
            raise DatasetError(_unreachable(ds, pool_table, avail, s, feature, cramers_v, None, None))
        _, table, achieved = best
    n_total = int(table.sum())
    if table.sum(axis=1).min() < _FEW_PER_CLASS:
        warnings.warn(f"The fine-tuning set has only {n_total} images ({table.sum(axis=1).min()} in its smallest "
                      "class): "
                      f"the pool has few images to tie {feature!r} to {spurious_class!r} at V = {cramers_v}. Use a "
                      "larger pool or another pair (list_coco_pairs).", RavlWarning, stacklevel=2)

    # 3. draw the images: each (class, feature) cell of the pool in random order, eval first
    rng_draw = np.random.default_rng(streams[3])
    cells = []
    for ci in range(c):
        for f in (False, True):
            members = idx[(labels == ci) & (has_feature == f)]
            cells.append(members[rng_draw.permutation(members.size)])
    eval_idx = _pick(cells, e_table)
    train_idx = _pick(cells, table)
    rng_split = np.random.default_rng(streams[4])
    feat_of = dict(zip(idx.tolist(), has_feature.tolist()))
    lab_of = dict(zip(idx.tolist(), labels.tolist()))

    def strata(sel: np.ndarray) -> np.ndarray:
        return np.array([lab_of[i] * 2 + feat_of[i] for i in sel.tolist()], dtype=np.int64)

    n_val = int(round(val_fraction * n_total))
    train_is_val = _stratified_pick(strata(train_idx), n_val, rng_split)
    n_eval_total = int(eval_idx.size)
    n_eval_val = n_eval_total // 2
    eval_is_val = _stratified_pick(strata(eval_idx), n_eval_val, rng_split)
    train_order = rng_split.permutation(train_idx.size)
    eval_order = rng_split.permutation(eval_idx.size)

    staging = out_dir / f"{_STAGING_PREFIX}{uuid.uuid4().hex[:12]}"
    modes: set[str] = set()
    try:
        staging.mkdir(parents=True)
        modes |= _write_folder(staging / "train", pool, train_idx[train_order],
                               np.where(train_is_val[train_order], "val", "train"), feat_of, images,
                               desc="fine-tuning images", show=progress)
        modes |= _write_folder(staging / "eval", pool, eval_idx[eval_order],
                               np.where(eval_is_val[eval_order], "val", "test"), feat_of, images,
                               desc="evaluation images", show=progress)
        setting = CocoSetting(
            spurious_class=spurious_class, spurious_index=s, feature=feature, target_v=cramers_v,
            achieved_v=achieved, contingency=tuple((int(a), int(b)) for a, b in table),
            eval_contingency=tuple((int(a), int(b)) for a, b in e_table), eval_v=cramers_v_of(e_table),
            pool_contingency=tuple((int(a), int(b)) for a, b in pool_table), classes=ds.classes, n_train=n_total,
            n_val=n_val, n_eval=n_eval_total, n_eval_val=n_eval_val, n_train_requested=n_train,
            n_eval_requested=n_eval, val_fraction=val_fraction, seed=seed, data_dir=ds.root,
            pool_fingerprint=fingerprint, images_mode=images, train_dir=(out_dir / "train").absolute(),
            eval_dir=(out_dir / "eval").absolute())
        _swap_into_place(out_dir, staging, _CALLER)
        atomic_write_json(out_dir / SETTING_FILE, setting.to_dict())
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    if images == "hardlink" and "copy" in modes:
        logger.warning("Some images could not be hard-linked from %s and were copied.", ds.root)
    logger.info("Built COCO setting %r <-> %r (V target %.3f, achieved %.4f): %d + %d images in %.1f s -> %s",
                feature, spurious_class, cramers_v, achieved, n_total, n_eval_total, time.perf_counter() - t0, out_dir)
    return setting


def _unreachable(ds: RegionDataset, pool_table: np.ndarray, avail: np.ndarray, s: int, feature: str, target: float,
                 n_train: int | None, best: tuple[int, np.ndarray, float] | None) -> str:
    name = ds.classes[s]
    others_with = int(avail[np.arange(len(ds.classes)) != s, 1].sum())
    facts = (f"after setting the evaluation set aside, {int(avail[s, 1])} image(s) of {name!r} show {feature!r} and "
             f"{int(avail[s, 0])} do not; the other classes have {others_with} image(s) with it")
    what = f"Cramér's V = {target} (±{V_TOLERANCE}) between {name!r} and {feature!r}"
    if n_train is not None and best is not None:
        k = best[0]
        return (f"The pool cannot give n_train={n_train} fine-tuning images at {what}: {facts}. It reaches it with at "
                f"most {k} images per class: use n_train={k * len(ds.classes)} or fewer (or n_train=None for the "
                "largest), or lower n_eval so that more images stay for fine-tuning.")
    return (f"The pool cannot reach {what} with balanced classes: {facts}. Choose a target the pool allows (a "
            f"lower one needs more images of the other classes with {feature!r} and of {name!r} without it), another "
            "pair (list_coco_pairs ranks them by natural association) or a larger pool.")


def _write_folder(folder: Path, pool: _Pool, sel: np.ndarray, splits: np.ndarray, feat_of: dict[int, bool],
                  mode: str, *, desc: str, show: bool) -> set[str]:
    folder.mkdir(parents=True)
    out_rows = []
    modes = set()
    bar = progress_bar(total=int(sel.size), desc=desc, disable=None if show else True)
    try:
        for i, split in zip(sel.tolist(), splits.tolist()):
            rec = pool.ds.records[i]
            row = dict(pool.rows[i])
            row["split"] = split
            row["has_feature"] = bool(feat_of[i])
            modes.add(_place_file(rec.path, folder.joinpath(*rec.file_name.replace("\\", "/").split("/")), mode))
            out_rows.append(row)
            bar.update(1)
    finally:
        bar.close()
    write_metadata(folder, out_rows)
    write_classes(folder, pool.ds.classes)
    return modes


def _existing(out_dir: Path, params: dict[str, Any]) -> tuple[CocoSetting | None, str]:
    path = out_dir / SETTING_FILE
    if not path.is_file():
        return None, ""
    try:
        old = read_coco_setting(path)
    except DatasetError as exc:
        return None, f"{path} is not a COCO setting ({exc})"
    old_params = old.parameters()
    diff = [f"{k} {old_params.get(k)!r} -> {v!r}" for k, v in params.items() if old_params.get(k) != v]
    if diff:
        return None, "parameters differ: " + ", ".join(diff)
    for d in (old.train_dir, old.eval_dir):
        if not (d / "metadata.jsonl").is_file() or not (d / "images").is_dir():
            return None, f"{d} is incomplete"
    return old, ""


# --------------------------------------------------------------------------------------------
# Candidate pairs
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class CocoPair:
    """Natural association of a class and a non-class category in a pool.

    Attributes:
        spurious_class: The class.
        feature_category: The category (a region attribute that is not a class).
        n_class: Pool images of the class.
        n_feature: Pool images showing the category.
        n_both: Images of the class showing the category.
        n_images: Pool images.
        p_in_class: Fraction of the class's images that show the category.
        p_elsewhere: Fraction of the other classes' images that show it.
        lift: ``p_in_class / P(category)``.
        cramers_v: Cramér's V (= phi) of the 2 x 2 table (in the class or not) x (shows it or not).
    """

    spurious_class: str
    feature_category: str
    n_class: int
    n_feature: int
    n_both: int
    n_images: int
    p_in_class: float
    p_elsewhere: float
    lift: float
    cramers_v: float


def list_coco_pairs(data_dir: str | os.PathLike, top: int = 20, *, min_count: int = 5) -> list[CocoPair]:
    """Rank (class, category) pairs of a pool by their natural co-occurrence.

    For every class and every category that is not a class, the 2 x 2 table (image of the class
    or not) x (shows the category or not) over the pool's labelled rows. Pairs where the category
    is over-represented in the class (lift > 1) and co-occurs at least ``min_count`` times are
    ranked by the table's Cramér's V (phi), then by ``n_both``, then by name. A pair with a high
    natural V and large counts is a good candidate for :func:`make_coco_setting` (the pool then
    has images for the strong fine-tuning association and for both evaluation groups).

    Args:
        data_dir: The pool folder (e.g. written by ``convert_coco``).
        top: How many pairs to return.
        min_count: Least number of class images showing the category.

    Returns:
        Up to ``top`` :class:`CocoPair`, best first.
    """
    top = check_int(top, "top", "list_coco_pairs", low=1)
    min_count = check_int(min_count, "min_count", "list_coco_pairs", low=1)
    ds = _load_pool(data_dir, "list_coco_pairs")
    classes = ds.classes
    labels = ds.label_indices
    n = len(ds)
    cats = [v for v in _attribute_values(ds) if v not in classes and v != EMPTY_ATTRIBUTE]
    col = {v: j for j, v in enumerate(cats)}
    present = np.zeros((n, len(cats)), dtype=bool)
    for i, r in enumerate(ds.records):
        for a in set(r.region_attributes or ()):
            if a in col:
                present[i, col[a]] = True
    n_feature = present.sum(axis=0)
    out = []
    for ci, name in enumerate(classes):
        in_class = labels == ci
        n_class = int(in_class.sum())
        both = present[in_class].sum(axis=0)
        for j, cat in enumerate(cats):
            nb, nf = int(both[j]), int(n_feature[j])
            if nb < min_count or n_class in (0, n) or nf in (0, n):
                continue
            lift = (nb / n_class) / (nf / n)
            if lift <= 1:
                continue
            phi = (nb * n - n_class * nf) / math.sqrt(n_class * (n - n_class) * nf * (n - nf))
            out.append(CocoPair(name, cat, n_class, nf, nb, n, nb / n_class, (nf - nb) / (n - n_class), lift, phi))
    out.sort(key=lambda p: (-p.cramers_v, -p.n_both, p.spurious_class, p.feature_category))
    return out[:top]


def format_coco_pairs(pairs: Sequence[CocoPair]) -> str:
    """A text table of :func:`list_coco_pairs`' result."""
    if not pairs:
        return "no (class, category) pair co-occurs often enough; lower min_count or convert more images"
    head = ("class", "category", "V", "lift", "with in class", "with elsewhere")
    rows = [(p.spurious_class, p.feature_category, f"{p.cramers_v:.3f}", f"{p.lift:.2f}",
             f"{p.n_both}/{p.n_class} ({p.p_in_class:.0%})",
             f"{p.n_feature - p.n_both}/{p.n_images - p.n_class} ({p.p_elsewhere:.0%})") for p in pairs]
    widths = [max(len(r[k]) for r in [head, *rows]) for k in range(len(head))]
    lines = ["  ".join(v.ljust(w) if k < 2 else v.rjust(w) for k, (v, w) in enumerate(zip(r, widths)))
             for r in [head, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
