"""Synthetic co-occurrence settings: two objects that appear together with a chosen strength.

:func:`make_cooccurrence_benchmark` writes a setting for cross-modal retrieval and ODmAP@k
(docs/retrieval.md): images made like the spurious-correlation settings of
:mod:`ravl.data.synthetic` (56x56 RGB, four quadrants: a handwritten digit in one, the registered
feature tiles of :mod:`ravl.data.features` in others, the rest black), but with **two** objects
A and B (``red_square`` and ``ring`` by default) whose presence is tied with a target strength,
and captions that name the digit **and every object shown** ("the number is a seven with a red
square and a ring").

Strength is the phi coefficient of the fine-tuning set's 2x2 table of (A shown, B shown), i.e. its
Cramér's V: 1 means B appears exactly when A does, 0 that they are independent. The table comes from
:func:`ravl.data.synthetic.make_contingency_table` with A's presence as a two-row "class" (about
half of the images show A); the evaluation set has A and B independent (half of each row with B),
so removing one object from an evaluation image leaves a scene the fine-tuning set rarely showed.

Output: ``out_dir/train/`` (splits ``train`` / ``val``), ``out_dir/eval/`` (``val`` / ``test``),
each an ordinary dataset folder whose rows have ``caption``, ``label`` (the digit word),
``split``, ``boxes`` (the quadrants), ``region_attributes`` (digit word, object names, ``"empty"``)
and the bookkeeping ``objects`` (the names shown); and ``out_dir/cooccurrence.json``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ravl.data.attributes import EMPTY_ATTRIBUTE
from ravl.data.dataset import grid_boxes, write_metadata
from ravl.data.digits import DIGIT_CLASSES, DIGIT_SIZE, load_digit_source, parse_source, split_digit_pools
from ravl.data.features import FEATURES, get_feature
from ravl.data.manipulation import add_mention
from ravl.data.synthetic import (
    CAPTION_TEMPLATES,
    _png_bytes,
    _resolve_seed,
    _rows_from_table,
    _stratified_pick,
    make_contingency_table,
)
from ravl.exceptions import DatasetError, InvalidParameterError
from ravl.utils.io import atomic_write_json, read_json
from ravl.utils.progress import progress as progress_bar
from ravl.utils.validation import check_float, check_int

__all__ = ["COOCCURRENCE_FILE", "CooccurrenceSetting", "make_cooccurrence_benchmark", "phi_of"]

logger = logging.getLogger(__name__)

#: File in the output folder that records the setting.
COOCCURRENCE_FILE = "cooccurrence.json"
_CALLER = "make_cooccurrence_benchmark"
_VERSION = 1


def phi_of(a: np.ndarray, b: np.ndarray) -> float:
    """Phi coefficient (signed) of two boolean arrays: the co-occurrence strength of A and B.

    Example:
        >>> phi_of(np.array([1, 1, 0, 0], bool), np.array([1, 1, 0, 0], bool))
        1.0
    """
    a, b = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    n11, n10 = int((a & b).sum()), int((a & ~b).sum())
    n01, n00 = int((~a & b).sum()), int((~a & ~b).sum())
    den = float(np.sqrt(float(n11 + n10) * (n01 + n00) * (n11 + n01) * (n10 + n00)))
    return 0.0 if den == 0 else (n11 * n00 - n10 * n01) / den


@dataclass(frozen=True)
class CooccurrenceSetting:
    """One co-occurrence setting: the planted strength and where its datasets are.

    Attributes:
        objects: ``(A, B)``, the two feature names (also their region attributes).
        target: The phi (Cramér's V) asked for.
        achieved: Phi of the fine-tuning set's (A shown, B shown) table.
        table: Fine-tuning ``[[A- B-, A- B+], [A+ B-, A+ B+]]`` image counts.
        eval_table: The same for the evaluation set (A and B independent).
        eval_phi: Phi of the evaluation table (about 0).
        n_train: Fine-tuning images (train + val).
        n_eval: Evaluation images (val + test).
        image_size: Side of the images in pixels.
        seed: Integer seed of the build.
        source: Digit source.
        train_dir: Fine-tuning dataset folder.
        eval_dir: Evaluation dataset folder.
    """

    objects: tuple[str, str]
    target: float
    achieved: float
    table: tuple[tuple[int, int], tuple[int, int]]
    eval_table: tuple[tuple[int, int], tuple[int, int]]
    eval_phi: float
    n_train: int
    n_eval: int
    image_size: int
    seed: int
    source: str
    train_dir: Path
    eval_dir: Path
    version: int = _VERSION

    def parameters(self) -> dict[str, Any]:
        return {"objects": list(self.objects), "target": self.target, "n_train": self.n_train,
                "n_eval": self.n_eval, "image_size": self.image_size, "seed": self.seed, "source": self.source,
                "version": self.version}

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d.update(objects=list(self.objects), table=[list(r) for r in self.table],
                 eval_table=[list(r) for r in self.eval_table], train_dir=str(self.train_dir),
                 eval_dir=str(self.eval_dir))
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CooccurrenceSetting:
        names = {f.name for f in dataclasses.fields(cls)}
        kw = {k: v for k, v in d.items() if k in names}
        kw["objects"] = tuple(kw["objects"])
        kw["table"] = tuple(tuple(int(x) for x in r) for r in kw["table"])
        kw["eval_table"] = tuple(tuple(int(x) for x in r) for r in kw["eval_table"])
        kw["train_dir"], kw["eval_dir"] = Path(kw["train_dir"]), Path(kw["eval_dir"])
        return cls(**kw)


def _write(folder: Path, labels, a, b, split, digit, pos, template, pool, objects, image_size, *, desc, show):
    q = image_size // 2
    digits = pool.images
    if q != DIGIT_SIZE:
        digits = np.stack([np.asarray(Image.fromarray(d).resize((q, q), Image.BILINEAR)) for d in digits])
    tiles = [get_feature(o).render(q) for o in objects]
    boxes = [[int(round(v)) for v in bx] for bx in grid_boxes(image_size, image_size, (2, 2))]
    n = labels.shape[0]
    width = max(5, len(str(n - 1)))
    (folder / "images").mkdir(parents=True, exist_ok=True)
    meta = []
    bar = progress_bar(total=n, desc=desc, disable=None if show else True)
    for i in range(n):
        img = np.zeros((2 * q, 2 * q, 3), dtype=np.uint8)
        attrs = [EMPTY_ATTRIBUTE] * 4
        word = pool.classes[int(labels[i])]
        shown = []
        for k, (present, tile, name) in enumerate(((True, None, word), (a[i], tiles[0], objects[0]),
                                                    (b[i], tiles[1], objects[1]))):
            if not present:
                continue
            p = int(pos[i, k])
            y, x = (p // 2) * q, (p % 2) * q
            img[y:y + q, x:x + q] = digits[digit[i]][..., None] if tile is None else tile
            attrs[p] = name
            if tile is not None:
                shown.append(name)
        caption = CAPTION_TEMPLATES[int(template[i])].format(word)
        for name in shown:
            caption = add_mention(caption, name)
        fn = f"images/{i:0{width}d}.png"
        with open(folder / fn, "wb") as fh:
            fh.write(_png_bytes(img))
        meta.append({"file_name": fn, "caption": caption, "label": word, "split": str(split[i]), "boxes": boxes,
                     "region_attributes": attrs, "objects": shown})
        bar.update(1)
    bar.close()
    write_metadata(folder, meta)
    (folder / "classes.txt").write_text("".join(c + "\n" for c in pool.classes), encoding="utf-8")


def _draw(table: np.ndarray, val_name: str, other: str, val_fraction: float, pool, rng):
    a, b = _rows_from_table(table, rng)
    n = a.shape[0]
    labels = rng.permutation(np.arange(n) % len(DIGIT_CLASSES))
    is_val = _stratified_pick(a * 2 + b, int(round(val_fraction * n)), rng)
    split = np.where(is_val, val_name, other)
    digit = np.empty(n, dtype=np.int64)
    for c in range(len(pool.classes)):
        rows = np.flatnonzero(labels == c)
        cand = np.flatnonzero(pool.labels == c)
        if rows.size:
            digit[rows] = cand[rng.integers(cand.size, size=rows.size)]
    pos = np.argsort(rng.random((n, 4)), axis=1)[:, :3]  # digit, A, B: distinct quadrants
    template = rng.integers(len(CAPTION_TEMPLATES), size=n)
    return labels, a.astype(bool), b.astype(bool), split, digit, pos, template


def make_cooccurrence_benchmark(out_dir: str | os.PathLike, *, objects: tuple[str, str] = ("red_square", "ring"),
                                strength: float = 0.9, n_train: int = 2000, n_eval: int = 400,
                                val_fraction: float = 0.05, source: str = "sklearn", image_size: int = 56,
                                random_state=0, progress: bool = True) -> CooccurrenceSetting:
    """Build a two-object co-occurrence setting (module docstring).

    Args:
        out_dir: Output folder (created; ``train/`` and ``eval/`` are replaced when it holds a
            setting built by this function with other parameters).
        objects: Two distinct registered features ``(A, B)`` (:func:`ravl.data.features.list_features`).
        strength: Target phi of (A shown, B shown) in the fine-tuning set, in [0, 1].
        n_train: Fine-tuning images, at least 20.
        n_eval: Evaluation images, at least 20.
        val_fraction: Fraction of the fine-tuning set split ``"val"``, in [0, 0.5].
        source: Digit source (:mod:`ravl.data.digits`).
        image_size: Even side in [8, 1024].
        random_state: Seed (int) or None.
        progress: Show progress bars.

    Returns:
        The :class:`CooccurrenceSetting` (also in ``out_dir/cooccurrence.json``).

    Raises:
        InvalidParameterError: A bad parameter.
        DatasetError: ``out_dir`` holds ``train/`` or ``eval/`` folders not made by this function.
    """
    out = Path(out_dir)
    if (not isinstance(objects, (tuple, list)) or len(objects) != 2 or objects[0] == objects[1]
            or not all(isinstance(o, str) for o in objects)):
        raise InvalidParameterError(f"The 'objects' parameter of {_CALLER} must be two distinct feature names. Got "
                                    f"{objects!r} instead.")
    for o in objects:
        FEATURES.get(o, where=f"the 'objects' parameter of {_CALLER}")
    strength = check_float(strength, "strength", _CALLER, low=0.0, high=1.0)
    n_train = check_int(n_train, "n_train", _CALLER, low=20)
    n_eval = check_int(n_eval, "n_eval", _CALLER, low=20)
    val_fraction = check_float(val_fraction, "val_fraction", _CALLER, low=0.0, high=0.5)
    parse_source(source)
    image_size = check_int(image_size, "image_size", _CALLER, low=8, high=1024)
    if image_size % 2:
        raise InvalidParameterError(f"The 'image_size' parameter of {_CALLER} must be even. Got {image_size}.")
    seed, fixed = _resolve_seed(random_state, _CALLER)
    params = {"objects": list(objects), "target": strength, "n_train": n_train, "n_eval": n_eval,
              "image_size": image_size, "seed": seed, "source": source, "version": _VERSION}
    record = out / COOCCURRENCE_FILE
    if record.is_file():
        try:
            old = CooccurrenceSetting.from_dict(read_json(record))
        except (OSError, ValueError, KeyError, TypeError):
            old = None
        if old is not None and fixed and old.parameters() == params and (out / "train/metadata.jsonl").is_file() \
                and (out / "eval/metadata.jsonl").is_file():
            return dataclasses.replace(old, train_dir=(out / "train").absolute(), eval_dir=(out / "eval").absolute())
    elif any((out / d).exists() for d in ("train", "eval")):
        raise DatasetError(f"{out} already has train/ or eval/ not made by {_CALLER} (no {COOCCURRENCE_FILE}); "
                           "choose an empty or new folder.")
    for d in ("train", "eval"):
        if (out / d).exists():
            shutil.rmtree(out / d)
    record.unlink(missing_ok=True)

    streams = [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(4)]
    train_pool, eval_pool = split_digit_pools(load_digit_source(source), random_state=streams[0])
    table, _ = make_contingency_table(n_train, n_classes=2, spurious_index=1, cramers_v=strength,
                                             random_state=streams[1])
    rows = np.array([n_eval - n_eval // 2, n_eval // 2])
    e_table = np.stack([rows - rows // 2, rows // 2], axis=1)
    tr = _draw(table, "val", "train", val_fraction, train_pool, streams[2])
    ev = _draw(e_table, "val", "test", 0.5, eval_pool, streams[3])
    out.mkdir(parents=True, exist_ok=True)
    _write(out / "train", *tr, train_pool, tuple(objects), image_size, desc="fine-tuning images", show=progress)
    _write(out / "eval", *ev, eval_pool, tuple(objects), image_size, desc="evaluation images", show=progress)
    setting = CooccurrenceSetting(
        objects=(objects[0], objects[1]), target=strength, achieved=float(phi_of(tr[1], tr[2])),
        table=tuple((int(x), int(y)) for x, y in table), eval_table=tuple((int(x), int(y)) for x, y in e_table),
        eval_phi=float(phi_of(ev[1], ev[2])), n_train=n_train, n_eval=n_eval, image_size=image_size, seed=seed,
        source=source, train_dir=(out / "train").absolute(), eval_dir=(out / "eval").absolute())
    atomic_write_json(record, json.loads(json.dumps(setting.to_dict())))
    logger.info("Built co-occurrence setting %s <-> %s: phi target %.3f, achieved %.4f -> %s", objects[0],
                objects[1], strength, setting.achieved, out)
    return setting
