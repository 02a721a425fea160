"""evaluate_retrieval with the tiny CLIP, against an independent full-sort computation."""

import json

import numpy as np
import pytest

from ravl.data.dataset import load_dataset
from ravl.exceptions import DatasetError, InvalidParameterError
from ravl.models import load_model
from ravl.models.regions import embed_images, embed_texts
from ravl.retrieval import RetrievalResult, evaluate_retrieval, image_captions


def _by_full_sort(sim, owner, ks, texts=None):
    """Recall@k and mAP from whole stable argsorts (a second implementation); with ``texts``,
    relevance by equal caption text."""
    def one(s, rel_sets):
        rec = {k: [] for k in ks}
        aps = []
        for q, rel in enumerate(rel_sets):
            order = np.argsort(-s[q], kind="stable")
            hit = np.isin(order, list(rel))
            pos = np.flatnonzero(hit) + 1
            for k in ks:
                rec[k].append(pos.min() <= k)
            aps.append(np.mean(np.arange(1, len(pos) + 1) / pos))
        return {**{f"recall@{k}": float(np.mean(v)) for k, v in rec.items()}, "map": float(np.mean(aps))}

    if texts is None:
        i2t = one(sim, [set(np.flatnonzero(owner == i)) for i in range(sim.shape[0])])
        t2i = one(sim.T, [{int(i)} for i in owner])
    else:
        t = np.array(texts, dtype=object)
        i2t = one(sim, [set(np.flatnonzero(np.isin(t, t[owner == i]))) for i in range(sim.shape[0])])
        t2i = one(sim.T, [set(owner[t == t[j]].tolist()) for j in range(len(t))])
    return i2t, t2i


def test_captions_include_the_captions_list(caption_folder):
    ds = load_dataset(caption_folder).subset("test")
    caps = image_captions(ds)
    assert caps[0] == ["a green square", "a small square on grey", "a coloured block"]  # repeat dropped
    assert caps[1] == ["a yellow square"]


def test_evaluate_retrieval_matches_a_full_sort(caption_folder):
    model = load_model("tiny", seed=0)
    ds = load_dataset(caption_folder)
    res = evaluate_retrieval(model, ds, split="test", ks=(1, 2, 5), batch_size=3, progress=False)
    test = ds.subset("test")
    caps = image_captions(test)
    owner = np.repeat(np.arange(len(caps)), [len(c) for c in caps])
    img = embed_images(model, test, progress=False)
    txt = embed_texts(model, [c for cs in caps for c in cs]).numpy()
    i2t, t2i = _by_full_sort(img @ txt.T, owner, (1, 2, 5))
    assert res.n_images == 4 and res.n_captions == 6 and res.ks == (1, 2, 5)
    for k, v in i2t.items():
        assert res.image_to_text[k] == pytest.approx(v, abs=1e-6), k
    for k, v in t2i.items():
        assert res.text_to_image[k] == pytest.approx(v, abs=1e-6), k
    d = json.loads(json.dumps(res.to_dict()))
    assert RetrievalResult.from_dict(d) == res
    recalls = [v for d_ in (i2t, t2i) for k, v in d_.items() if k.startswith("recall@")]
    assert d["rsum"] == pytest.approx(sum(recalls))


def test_same_text_relevance(caption_folder):
    model = load_model("tiny", seed=0)
    ds = load_dataset(caption_folder)
    res = evaluate_retrieval(model, ds, split="test", ks=(1, 2), same_text=True, progress=False)
    test = ds.subset("test")
    caps = image_captions(test)  # images 0 and 2 of the split are both "a green square"
    flat = [c for cs in caps for c in cs]
    assert flat.count("a green square") == 2
    owner = np.repeat(np.arange(len(caps)), [len(c) for c in caps])
    sim = embed_images(model, test, progress=False) @ embed_texts(model, flat).numpy().T
    i2t, t2i = _by_full_sort(sim, owner, (1, 2), texts=flat)
    for k, v in i2t.items():
        assert res.image_to_text[k] == pytest.approx(v, abs=1e-6), k
    for k, v in t2i.items():
        assert res.text_to_image[k] == pytest.approx(v, abs=1e-6), k
    assert res.meta["same_text"] is True


def test_bad_input(caption_folder, tmp_path):
    model = load_model("tiny", seed=0)
    ds = load_dataset(caption_folder)
    with pytest.raises(InvalidParameterError, match="'ks' parameter"):
        evaluate_retrieval(model, ds, ks=(0,), progress=False)
    with pytest.raises(InvalidParameterError, match="'model' parameter"):
        evaluate_retrieval("tiny", ds, progress=False)
    with pytest.raises(InvalidParameterError, match="'dataset' parameter"):
        evaluate_retrieval(model, str(caption_folder), progress=False)
    with pytest.raises(DatasetError, match="has no image"):
        evaluate_retrieval(model, ds, split="val", progress=False)
