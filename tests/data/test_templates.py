"""Tests of ravl.data.templates: prompt templates mined from captions."""

from __future__ import annotations

import doctest
import pickle

import pytest

from ravl.data import load_dataset
from ravl.data import templates as tm
from ravl.data.templates import CaptionTemplates, templates_from_captions, templates_from_dataset, write_templates
from ravl.zeroshot import read_templates

CAPTIONS = [
    ("A dog sitting on a couch.", "dog"),
    ("a cat sitting on a couch", "cat"),
    ("a  bus sitting on a couch!", "bus"),   # white space and final punctuation normalised
    ("Two dogs playing in the snow", "dog"),  # plural "s"
    ("two buses playing in the snow", "bus"),  # plural "es"
    ("two cats playing in the snow.", "cat"),
    ("a close up of a teddy  bear", "teddy bear"),  # several words, any white space
    ("a close up of a dog", "dog"),
    ("a dog chasing a dog", "dog"),  # twice: skipped
    ("a category of things", "cat"),  # "cat" inside a word: no match, skipped
    ("people on a street", "person"),  # irregular plural: no match, skipped
    ("a {weird} dog", "dog"),  # braces: skipped
]


def test_templates_from_hand_made_captions():
    t = templates_from_captions([c for c, _ in CAPTIONS], [lab for _, lab in CAPTIONS], min_count=2)
    assert isinstance(t, CaptionTemplates) and isinstance(t, tuple)
    # "two buses ..." gives "two {}es ...", a phrasing of its own (once)
    assert tuple(t) == ("a {} sitting on a couch", "a close up of a {}", "two {}s playing in the snow")
    assert t.counts == (3, 2, 2)
    assert (t.n_captions, t.n_used, t.n_without_label, t.n_repeated_label) == (12, 8, 2, 1)
    assert t.reason is None
    # the templates format back into the captions they came from
    assert t[2].format("dog") == "two dogs playing in the snow"
    assert "two {}es playing in the snow" in templates_from_captions([c for c, _ in CAPTIONS],
                                                                     [lab for _, lab in CAPTIONS], min_count=1)


def test_ordering_limits_and_determinism():
    caps = ["a b {}", "a b {}", "x {}", "x {}", "y {}", "y {}", "z {}"]
    caps = [c.format("dog") for c in caps]
    labels = ["dog"] * len(caps)
    t = templates_from_captions(caps, labels, min_count=2)
    assert tuple(t) == ("a b {}", "x {}", "y {}")  # ties in alphabetical order
    assert tuple(templates_from_captions(caps, labels, min_count=2, max_templates=2)) == ("a b {}", "x {}")
    assert tuple(templates_from_captions(caps[::-1], labels, min_count=1)) == ("a b {}", "x {}", "y {}", "z {}")


def test_empty_results_give_a_reason():
    t = templates_from_captions(["a dog and a dog", "a cat"], ["dog", "dog"], min_count=1)
    assert t == () and t.counts == ()
    assert t.reason == ("no caption names its label exactly once (2 caption(s): 1 without the label, 1 with it several "
                        "times)")
    t = templates_from_captions(["a dog here", "one dog there"], ["dog", "dog"], min_count=2)
    assert t == ()
    assert t.reason == ("no phrasing occurs at least min_count=2 times among the 2 caption(s) that name their label "
                        "once (the most frequent, 'a {} here', occurs 1 time(s)); lower min_count or give more captions")
    assert templates_from_captions([], []).reason == "no caption was given"


def test_bad_arguments():
    with pytest.raises(ValueError, match="needs one label per caption: 2 captions, 1 labels"):
        templates_from_captions(["a", "b"], ["x"])
    with pytest.raises(ValueError, match="The 'labels' parameter of templates_from_captions must hold strings"):
        templates_from_captions(["a"], [None])
    with pytest.raises(ValueError, match="The 'min_count' parameter of templates_from_captions must be an int"):
        templates_from_captions(["a"], ["a"], min_count=0)


def test_write_templates_round_trips_through_read_templates(tmp_path):
    t = templates_from_captions([c for c, _ in CAPTIONS], [lab for _, lab in CAPTIONS], min_count=2)
    path = write_templates(tmp_path / "templates.txt", t)
    assert read_templates(path) == tuple(t)
    assert path.read_text().splitlines()[1:3] == ["# 3 caption(s)", "a {} sitting on a couch"]
    with pytest.raises(ValueError, match=r"needs at least one template \(no caption was given\)"):
        write_templates(tmp_path / "x.txt", templates_from_captions([], []))
    with pytest.raises(ValueError, match="Every template must be one line containing"):
        write_templates(tmp_path / "x.txt", ["a photo"])
    copy = pickle.loads(pickle.dumps(t))
    assert copy == t and copy.counts == t.counts and copy.n_used == t.n_used


def test_templates_from_a_converted_coco_pool(coco_pool):
    ds = load_dataset(coco_pool)
    t = templates_from_dataset(ds, min_count=5)
    # the fixture's captions use four templates; "two {}s in a park" keeps the plural ending outside
    assert set(t) == {"a {} sitting on the grass", "a photo of a {}", "two {}s in a park", "the {} looks at the camera"}
    assert t.n_used == t.n_captions == sum(r.caption is not None for r in ds)


def test_module_examples():
    assert doctest.testmod(tm).failed == 0


def test_named_sets_and_the_pretrained_default(tmp_path, monkeypatch):
    from ravl.models import load_model
    from ravl.zeroshot import (
        DEFAULT_TEMPLATES,
        DIGIT_TEMPLATES,
        IMAGENET_TEMPLATES,
        default_templates,
        prompt_embeddings,
        templates_from_spec,
    )

    assert templates_from_spec("imagenet") == IMAGENET_TEMPLATES
    monkeypatch.chdir(tmp_path)
    (tmp_path / "digits").write_text("my {}\n")
    assert templates_from_spec("digits") == ("my {}",)  # a file of that name wins
    with pytest.raises(ValueError, match="does not exist"):
        templates_from_spec("imagenett")
    model = load_model("tiny")
    assert default_templates(model, ["nine", "three"]) == DEFAULT_TEMPLATES  # the tiny CLIP keeps the generic set
    model.default_template_set = "auto"  # what the pretrained backends declare
    assert default_templates(model, ["Nine", "3"]) == DIGIT_TEMPLATES
    assert default_templates(model, ["cardiomegaly", "normal"]) == IMAGENET_TEMPLATES
    # the zero-shot classifier follows the model's default
    assert prompt_embeddings(model, ["cat", "dog"]).shape[1] == len(IMAGENET_TEMPLATES)
    model.default_template_set = "klingon"
    with pytest.raises(ValueError, match="default_template_set is 'klingon'"):
        default_templates(model, ["cat"])
