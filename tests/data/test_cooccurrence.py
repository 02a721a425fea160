"""Co-occurrence settings: the achieved strength matches the target, and images and captions agree."""

import json

import numpy as np
import pytest
from PIL import Image

from ravl.data.cooccurrence import COOCCURRENCE_FILE, CooccurrenceSetting, make_cooccurrence_benchmark, phi_of
from ravl.data.dataset import load_dataset
from ravl.data.features import render_feature
from ravl.exceptions import InvalidParameterError


def _presence(folder, name):
    ds = load_dataset(folder)
    return np.array([name in r.region_attributes for r in ds]), ds


@pytest.mark.parametrize("target", [0.0, 0.5, 0.9])
def test_achieved_cooccurrence_matches_the_target(tmp_path, target):
    s = make_cooccurrence_benchmark(tmp_path / "s", strength=target, n_train=800, n_eval=100, random_state=1,
                                    progress=False)
    a, ds = _presence(s.train_dir, "red_square")
    b, _ = _presence(s.train_dir, "ring")
    measured = phi_of(a, b)  # from the written region_attributes, not from the builder's record
    assert abs(measured - target) <= 0.02 and measured == pytest.approx(s.achieved)
    assert 0.4 <= a.mean() <= 0.6  # about half of the images show A
    ea, _ = _presence(s.eval_dir, "red_square")
    eb, _ = _presence(s.eval_dir, "ring")
    assert abs(phi_of(ea, eb)) <= 0.05 and s.eval_phi == pytest.approx(phi_of(ea, eb))
    assert np.asarray(s.table).sum() == 800


def test_images_captions_and_record_agree(tmp_path):
    s = make_cooccurrence_benchmark(tmp_path / "s", strength=0.7, n_train=60, n_eval=40, random_state=0,
                                    progress=False)
    ds = load_dataset(s.eval_dir)
    tiles = {o: render_feature(o, 28) for o in s.objects}
    assert {r.split for r in ds} == {"val", "test"}
    for r in ds:
        px = np.asarray(Image.open(r.path).convert("RGB"))
        for (x0, y0, x1, y1), attr in zip(r.boxes, r.region_attributes):
            quad = px[int(y0):int(y1), int(x0):int(x1)]
            if attr in tiles:
                assert np.array_equal(quad, tiles[attr])
            elif attr == "empty":
                assert not quad.any()
        for o, words in (("red_square", "red square"), ("ring", "ring")):
            assert (words in r.caption) == (o in r.region_attributes), r.caption
        assert r.label in r.caption and r.label in r.region_attributes
    d = json.loads((tmp_path / "s" / COOCCURRENCE_FILE).read_text())
    assert CooccurrenceSetting.from_dict(d) == s
    # same parameters: reused, not rebuilt
    mtime = (s.train_dir / "metadata.jsonl").stat().st_mtime_ns
    assert make_cooccurrence_benchmark(tmp_path / "s", strength=0.7, n_train=60, n_eval=40, random_state=0,
                                       progress=False) == s
    assert (s.train_dir / "metadata.jsonl").stat().st_mtime_ns == mtime


def test_bad_parameters(tmp_path):
    with pytest.raises(InvalidParameterError, match="two distinct"):
        make_cooccurrence_benchmark(tmp_path / "x", objects=("ring", "ring"), progress=False)
    with pytest.raises(InvalidParameterError, match="'strength' parameter"):
        make_cooccurrence_benchmark(tmp_path / "x", strength=1.5, progress=False)
