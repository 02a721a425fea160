"""The pretraining corpus: printed digits, every object with every class, captions naming the objects."""

import json

import numpy as np
import pytest

from ravl.data import load_dataset
from ravl.data.digits import DIGIT_CLASSES
from ravl.data.features import BUILTIN_FEATURES
from ravl.data.pretraining import COLOURS, SHAPES, make_pretraining_corpus, render_printed_digit
from ravl.data.synthetic import cramers_v_of
from ravl.exceptions import DatasetError


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return make_pretraining_corpus(tmp_path_factory.mktemp("pc") / "c", n_images=1500, random_state=3, progress=False)


def _rows(folder):
    return [json.loads(x) for x in (folder / "metadata.jsonl").read_text().splitlines()]


def test_layout_splits_and_captions(corpus):
    ds = load_dataset(corpus)
    rows = _rows(corpus)
    assert len(ds) == 1500 and tuple(ds.classes) == tuple(DIGIT_CLASSES)
    assert sum(r["split"] == "val" for r in rows) == 75                     # 5 %
    objects = set(BUILTIN_FEATURES) | {f"{c}_{s}" for c in COLOURS for s in SHAPES}
    for r in rows:
        attrs = r["region_attributes"]
        assert attrs.count(r["label"]) == 1 and len(r["boxes"]) == 4       # one digit per image, four quadrants
        others = [a for a in attrs if a not in (r["label"], "empty")]
        assert set(others) <= objects
        assert r["caption"].split(" with ")[0].endswith(r["label"])         # the digit is named
        if " with " in r["caption"]:                                        # ... then every object, when mentioned
            for a in others:
                assert a.replace("_", " ") in r["caption"]


def test_no_object_is_tied_to_any_class(corpus):
    rows = _rows(corpus)
    # class x "quadrant holds an object" and class x "holds the red square": independent by construction
    for pred in (lambda a: a not in DIGIT_CLASSES and a != "empty", lambda a: a == "red_square"):
        table = np.zeros((10, 2))
        for r in rows:
            table[DIGIT_CLASSES.index(r["label"]), int(any(pred(a) for a in r["region_attributes"]))] += 1
        assert cramers_v_of(table) < 0.12
    seen = {a for r in rows for a in r["region_attributes"]}
    assert set(BUILTIN_FEATURES) <= seen                                     # every built-in feature appears


def test_reproducible_and_reused(corpus, tmp_path):
    again = make_pretraining_corpus(tmp_path / "c", n_images=1500, random_state=3, progress=False)
    assert (again / "metadata.jsonl").read_bytes() == (corpus / "metadata.jsonl").read_bytes()
    for name in ("images/00000.png", "images/01499.png"):
        assert (again / name).read_bytes() == (corpus / name).read_bytes()
    stamp = (again / "metadata.jsonl").stat().st_mtime_ns
    make_pretraining_corpus(tmp_path / "c", n_images=1500, random_state=3, progress=False)   # same parameters: kept
    assert (again / "metadata.jsonl").stat().st_mtime_ns == stamp


def test_printed_digits_are_legible_tiles():
    rng = np.random.default_rng(0)
    tiles = [render_printed_digit(d, 28, rng) for d in range(10)]
    for t in tiles:
        assert t.shape == (28, 28) and t.dtype == np.uint8
        ink = (t > 64).mean()
        assert 0.05 < ink < 0.6                                            # a glyph, not blank, not a block
    assert not np.array_equal(tiles[1], tiles[7])


def test_bad_parameters_and_foreign_folders(tmp_path):
    with pytest.raises(ValueError, match="'n_images' parameter of make_pretraining_corpus"):
        make_pretraining_corpus(tmp_path / "a", n_images=5)
    with pytest.raises(DatasetError, match="must be even"):
        make_pretraining_corpus(tmp_path / "a", n_images=20, image_size=57)
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "notes.txt").write_text("mine")
    with pytest.raises(DatasetError, match="not a pretraining corpus; choose an empty folder"):
        make_pretraining_corpus(tmp_path / "b", n_images=20)
    assert (tmp_path / "b" / "notes.txt").read_text() == "mine"


def test_objects_are_the_builtin_features_unless_asked(tmp_path):
    from ravl.data.features import FEATURES, register_feature

    @register_feature("pt_test_blob", kind="colour", description="test only", override=True)
    def _blob(size):
        return np.full((size, size, 3), 77, dtype=np.uint8)

    try:
        plain = make_pretraining_corpus(tmp_path / "a", n_images=300, random_state=0, progress=False)
        assert "pt_test_blob" not in json.loads((plain / "corpus.json").read_text())["objects"]
        mine = make_pretraining_corpus(tmp_path / "b", n_images=300, random_state=0, progress=False,
                                       features=(*BUILTIN_FEATURES, "pt_test_blob"))
        assert "pt_test_blob" in {a for r in _rows(mine) for a in r["region_attributes"]}
        with pytest.raises(ValueError, match="pt_test_blub"):
            make_pretraining_corpus(tmp_path / "c", n_images=20, features=("pt_test_blub",))
    finally:
        FEATURES.unregister("pt_test_blob")
