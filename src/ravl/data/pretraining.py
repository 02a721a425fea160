"""A broad synthetic corpus to pretrain the tiny CLIP on, in which no object is tied to any class.

The controlled settings (:mod:`ravl.data.synthetic`) fine-tune a CLIP on images whose captions tie
a feature to a class. The paper fine-tunes *pretrained* CLIPs; the tiny CLIP has no pretrained
weights of its own, so this module builds the corpus they come from
(:func:`ravl.training.pretrain.pretrain_tiny_clip`):

- **Printed digits, not handwriting.** Every digit is drawn with Pillow's bundled font at a
  random size, rotation, stroke and grey level, so the corpus shares no handwriting with any
  digit source the settings draw from (their evaluation digits stay unseen, whatever the seed).
- **Every object, everywhere, with every class.** Each quadrant other than the digit's holds,
  with probability ``object_probability`` and independently of the digit's class, one object:
  a spurious feature (by default ravl's built-in ones,
  :data:`ravl.data.features.BUILTIN_FEATURES`, painted as the settings paint them; ``features=``
  adds features you registered) or a generic shape (square, ring, stripes, dot) in one of several
  colours, at a random size. The class x object table is independent by construction.
- **Captions name the objects**: the digit with one of the settings' caption templates, then
  (with probability ``mention_probability``) the objects, e.g. ``"the image shows a three
  with a yellow ring and a red square"``.

The folder has the usual dataset layout (``metadata.jsonl`` with ``caption``, ``label``,
``split`` train/val, the four quadrant ``boxes`` and their ``region_attributes``) and
``corpus.json`` recording the parameters.

Example:
    >>> import tempfile
    >>> from ravl.data import load_dataset
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     folder = make_pretraining_corpus(tmp, n_images=40, random_state=0, progress=False)
    ...     ds = load_dataset(folder)
    ...     len(ds), ds.classes[:3]
    (40, ('zero', 'one', 'two'))
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ravl.data.attributes import EMPTY_ATTRIBUTE
from ravl.data.dataset import write_metadata
from ravl.data.digits import DIGIT_CLASSES
from ravl.data.features import BUILTIN_FEATURES, get_feature
from ravl.data.synthetic import CAPTION_TEMPLATES, _png_bytes
from ravl.exceptions import DatasetError
from ravl.utils.io import atomic_write_json, atomic_write_text, read_json
from ravl.utils.progress import progress as progress_bar
from ravl.utils.validation import check_float, check_int, check_random_state

__all__ = ["CORPUS_VERSION", "COLOURS", "SHAPES", "make_pretraining_corpus", "render_printed_digit"]

#: Bumped whenever the corpus a given set of parameters produces changes.
CORPUS_VERSION = 1

#: Colours of the generic shapes (name -> RGB).
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (255, 0, 0), "yellow": (255, 255, 0), "cyan": (0, 255, 255), "green": (0, 200, 0),
    "blue": (40, 90, 255), "magenta": (255, 0, 255), "orange": (255, 140, 0), "white": (255, 255, 255),
}
#: Generic shapes painted in every colour.
SHAPES = ("square", "ring", "stripes", "dot")

_CORPUS_FILE = "corpus.json"
_CALLER = "make_pretraining_corpus"


def render_printed_digit(digit: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """A ``[size, size]`` uint8 image of ``digit`` printed with Pillow's bundled font.

    Random font size (80-115 % of the tile), rotation (±20°), stroke (1-3 px at 28 px), offset
    and grey level (160-255), on black like the settings' digits.
    """
    big = 4 * size                                  # draw large, then downsample (anti-aliased)
    font = ImageFont.load_default(size=int(big * rng.uniform(0.8, 1.15)))
    canvas = Image.new("L", (big, big), 0)
    draw = ImageDraw.Draw(canvas)
    stroke = int(rng.integers(1, 4)) * max(1, big // 28)
    text = str(int(digit))
    x0, y0, x1, y1 = draw.textbbox((0, 0), text, font=font, stroke_width=stroke)
    w, h = x1 - x0, y1 - y0
    jitter = big * 0.08
    cx = (big - w) / 2 - x0 + rng.uniform(-jitter, jitter)
    cy = (big - h) / 2 - y0 + rng.uniform(-jitter, jitter)
    draw.text((cx, cy), text, fill=int(rng.integers(160, 256)), font=font, stroke_width=stroke,
              stroke_fill=None)
    canvas = canvas.rotate(float(rng.uniform(-20, 20)), resample=Image.BILINEAR)
    return np.asarray(canvas.resize((size, size), Image.BOX), dtype=np.uint8)


def _paint_shape(shape: str, colour: tuple[int, int, int], size: int, rng: np.random.Generator) -> np.ndarray:
    """A ``[size, size, 3]`` tile with one generic shape at a random scale (60-100 % of the tile)."""
    tile = np.zeros((size, size, 3), dtype=np.uint8)
    s = max(4, int(round(size * rng.uniform(0.6, 1.0))))
    o = rng.integers(0, size - s + 1, size=2)
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32)
    c = (s - 1) / 2
    r = np.hypot(yy - c, xx - c)
    if shape == "square":
        mask = np.ones((s, s), dtype=bool)
    elif shape == "ring":
        width = max(1.5, s / 10)
        mask = np.abs(r - (s / 2 - width)) <= width / 2
    elif shape == "stripes":
        period = max(4, s // 5)
        mask = ((xx + yy) % period) < period / 2
    else:  # dot
        mask = r <= s * 0.38
    patch = tile[o[0]:o[0] + s, o[1]:o[1] + s]
    patch[mask] = colour
    return tile


def _objects(features: tuple[str, ...]) -> list[tuple[str, str, Any]]:
    """Every object of the corpus: ``(attribute name, caption words, painter spec)``."""
    out: list[tuple[str, str, Any]] = []
    for name in features:
        out.append((name, name.replace("_", " ").replace("-", " "), ("feature", name)))
    for shape in SHAPES:
        for colour in COLOURS:
            words = f"{colour} {shape}"
            out.append((f"{colour}_{shape}", words, ("shape", shape, colour)))
    return out


def _article(words: str) -> str:
    if words.endswith("stripes"):
        return words
    return ("an " if words[0] in "aeiou" else "a ") + words


def make_pretraining_corpus(out_dir: str | os.PathLike, *, n_images: int = 30000, image_size: int = 56,
                            object_probability: float = 0.5, mention_probability: float = 0.8,
                            val_fraction: float = 0.05, features: Sequence[str] = BUILTIN_FEATURES,
                            random_state=0, progress: bool = True) -> Path:
    """Build the pretraining corpus (see the module docstring) in ``out_dir``.

    Args:
        out_dir: Output folder (created); must be empty or hold a corpus built by this function.
        n_images: Number of images (train + val), at least 20.
        image_size: Image side in pixels, even, in [16, 512] (quadrants are half of it).
        object_probability: Probability that each free quadrant holds an object, in [0, 1].
        mention_probability: Probability that a caption names the image's objects, in [0, 1].
        val_fraction: Fraction of images in split ``"val"``, in [0, 0.5].
        features: Registered spurious features painted as objects (default: the built-in ones,
            so the corpus does not depend on what else is registered).
        random_state: Seed (an int makes the corpus reproducible) or numpy Generator.
        progress: Show a progress bar.

    Returns:
        ``out_dir`` as a Path (a dataset folder :func:`ravl.data.load_dataset` reads).

    Raises:
        ValueError: For an invalid parameter.
        DatasetError: When ``out_dir`` holds files that are not such a corpus.
    """
    n_images = check_int(n_images, "n_images", _CALLER, low=20)
    image_size = check_int(image_size, "image_size", _CALLER, low=16, high=512)
    if image_size % 2:
        raise DatasetError(f"The 'image_size' parameter of {_CALLER} must be even. Got {image_size}.")
    object_probability = check_float(object_probability, "object_probability", _CALLER, low=0, high=1)
    mention_probability = check_float(mention_probability, "mention_probability", _CALLER, low=0, high=1)
    val_fraction = check_float(val_fraction, "val_fraction", _CALLER, low=0, high=0.5)
    features = tuple(get_feature(f).name for f in features)   # unknown names raise, naming the known ones
    seed = random_state if isinstance(random_state, int) else None
    rng = check_random_state(random_state)
    out = Path(out_dir)
    objects = _objects(features)
    params = {"version": CORPUS_VERSION, "n_images": n_images, "image_size": image_size,
              "object_probability": object_probability, "mention_probability": mention_probability,
              "val_fraction": val_fraction, "seed": seed, "objects": [o[0] for o in objects]}
    record = out / _CORPUS_FILE
    if record.exists():
        if seed is not None and read_json(record) == params and (out / "metadata.jsonl").exists():
            return out
    if out.exists() and any(p.name not in (_CORPUS_FILE, "metadata.jsonl", "classes.txt", "images")
                            for p in out.iterdir()):
        raise DatasetError(f"{out} holds files that are not a pretraining corpus; choose an empty folder.")
    (out / "images").mkdir(parents=True, exist_ok=True)

    q = image_size // 2
    boxes = [[0, 0, q, q], [q, 0, 2 * q, q], [0, q, q, 2 * q], [q, q, 2 * q, 2 * q]]
    width = max(5, len(str(n_images - 1)))
    n_val = int(round(val_fraction * n_images))
    split = np.array(["train"] * n_images, dtype=object)
    split[rng.permutation(n_images)[:n_val]] = "val"
    labels = rng.integers(0, len(DIGIT_CLASSES), size=n_images)
    rows = []
    feature_tiles = {name: get_feature(name).render(q) for name in features}
    bar = progress_bar(total=n_images, desc="pretraining corpus", disable=None if progress else True)
    try:
        for i in range(n_images):
            img = np.zeros((image_size, image_size, 3), dtype=np.uint8)
            pos = rng.permutation(4)
            attrs = [EMPTY_ATTRIBUTE] * 4
            c = int(labels[i])
            digit_tile = render_printed_digit(c, q, rng)
            y, x = (pos[0] // 2) * q, (pos[0] % 2) * q
            img[y:y + q, x:x + q] = digit_tile[..., None]
            attrs[pos[0]] = DIGIT_CLASSES[c]
            named = []
            for k in pos[1:]:
                if rng.random() >= object_probability:
                    continue
                name, words, spec = objects[int(rng.integers(len(objects)))]
                tile = feature_tiles[spec[1]] if spec[0] == "feature" else _paint_shape(spec[1], COLOURS[spec[2]],
                                                                                          q, rng)
                y, x = (k // 2) * q, (k % 2) * q
                img[y:y + q, x:x + q] = tile
                attrs[k] = name
                named.append(words)
            caption = CAPTION_TEMPLATES[int(rng.integers(len(CAPTION_TEMPLATES)))].format(DIGIT_CLASSES[c])
            if named and rng.random() < mention_probability:
                caption += " with " + " and ".join(_article(w) for w in named)
            file_name = f"images/{i:0{width}d}.png"
            with open(out / file_name, "wb") as fh:
                fh.write(_png_bytes(img))
            rows.append({"file_name": file_name, "caption": caption, "label": DIGIT_CLASSES[c],
                         "split": str(split[i]), "boxes": boxes, "region_attributes": attrs})
            bar.update(1)
    finally:
        bar.close()
    write_metadata(out, rows)
    atomic_write_text(out / "classes.txt", "".join(c + "\n" for c in DIGIT_CLASSES))
    atomic_write_json(record, params)
    return out
