"""Discovery method registry: one contract battery over every registered method, user registration."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from ravl.discovery import DiscoveryResult
from ravl.discovery.baselines import result_from_ranking
from ravl.discovery.pipeline import DiscoveryInputs
from ravl.discovery.registry import (
    DISCOVERY_METHODS,
    UnknownDiscoveryMethodError,
    describe_discovery_methods,
    discovery_method_info,
    get_discovery_method,
    list_discovery_methods,
    register_discovery_method,
)

BUILTIN = ["ravl", "ravl_gap_only", "ravl_influence_only", "ravl_unweighted", "random", "distilling_failures",
           "distilling_failures_region", "george", "george_region", "domino", "domino_region", "spurious_aware",
           "spurious_aware_region"]


def small_inputs(n_per_class: int = 20, seed: int = 0) -> DiscoveryInputs:
    """3 classes, 4 regions per image; a planted feature makes class-1/2 images predicted as class 0."""
    rng = np.random.default_rng(seed)
    c, dim = 3, 16
    basis = np.linalg.qr(rng.normal(size=(dim, dim)))[0]
    n = n_per_class * c
    y = np.repeat(np.arange(c), n_per_class)
    has = rng.random(n) < 0.5
    yhat = np.where(has, 0, y)
    yhat[rng.random(n) < 0.1] = 1
    # basis rows: 0..2 class prototypes, 3 the feature, 4 blank; regions: digit, feature-or-blank, blank, blank
    kinds = np.c_[y, np.where(has, 3, 4), np.full(n, 4), np.full(n, 4)]
    vec = basis[kinds.ravel()] + 0.3 * rng.normal(size=(4 * n, dim)) / np.sqrt(dim)
    emb = vec / np.linalg.norm(vec, axis=1, keepdims=True)
    img = np.repeat(np.arange(n), 4)
    img_emb = emb.reshape(n, 4, dim).sum(1)
    img_emb /= np.linalg.norm(img_emb, axis=1, keepdims=True)
    p = np.full((n, c), 0.05)
    p[np.arange(n), yhat] = 0.9
    q = rng.dirichlet(np.ones(c), size=4 * n)
    attrs = np.array(["c0", "c1", "c2", "feature", "blank"])[kinds.ravel()]
    return DiscoveryInputs(
        classes=("c0", "c1", "c2"), region_embeddings=emb, region_image_index=img, region_probabilities=q,
        image_embeddings=img_emb, image_labels=y, image_predictions=yhat, image_probabilities=p / p.sum(1)[:, None],
        region_file_names=tuple(f"{i}.png" for i in img), region_boxes=np.tile([0.0, 0.0, 1.0, 1.0], (4 * n, 1)),
        region_index=np.tile(np.arange(4), n), region_attributes=tuple(attrs.tolist()), region_mode="masked")


@pytest.fixture(scope="module")
def inputs():
    return small_inputs()


def test_builtins_registered():
    names = list_discovery_methods()
    assert names[:5] == ["ravl", "ravl_gap_only", "ravl_influence_only", "ravl_unweighted", "random"]
    assert set(BUILTIN) <= set(names)
    desc = describe_discovery_methods()
    assert all(desc[n] for n in BUILTIN)
    assert discovery_method_info("george_region").defaults == {"adaptation": "region"}


def _run(name, inputs, seed):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # RaVL may warn that nothing passed its filters on tiny data
        return get_discovery_method(name)(inputs, random_state=seed)


@pytest.mark.parametrize("name", list_discovery_methods())
def test_contract(inputs, name):
    res = _run(name, inputs, 0)
    assert isinstance(res, DiscoveryResult)
    assert res.status in ("ok", "no_feature", "no_clusters")
    assert res.classes == inputs.classes and res.n_regions == len(inputs.region_embeddings)
    r = len(inputs.region_embeddings)
    ranked = res.ranked_regions()
    assert len(set(ranked)) == len(ranked)
    assert all(isinstance(i, int) and 0 <= i < r for i in res.ranked_regions(all_features=True))
    for rank, f in enumerate(res.features, start=1):
        assert f.rank == rank
        assert f.class_name is None or f.class_name in inputs.classes
        assert len(set(f.region_indices)) == len(f.region_indices)
    again = _run(name, inputs, 0)
    assert again.ranked_regions(all_features=True) == res.ranked_regions(all_features=True)
    assert [f.class_name for f in again.features] == [f.class_name for f in res.features]
    d = res.to_dict()
    assert DiscoveryResult.from_dict(d).to_dict() == d


def test_keywords_override_registered_defaults(inputs):
    res = get_discovery_method("george")(inputs, random_state=0, adaptation="region", reducer="pca")
    assert res.meta["adaptation"] == "region"


def test_user_registration(inputs):
    name = "test_most_class0_like"
    try:
        @register_discovery_method(name, description="regions most like class 0")
        def mine(inp, *, random_state=0, column=0):
            ranked = np.argsort(-inp.region_probabilities[:, column], kind="stable")
            return result_from_ranking(inp, [{"regions": ranked}], name, random_state=random_state)

        assert name in list_discovery_methods()
        assert get_discovery_method(name) is mine
        res = get_discovery_method(name)(inputs, random_state=0)
        assert res.ranked_regions()[0] == int(np.argmax(inputs.region_probabilities[:, 0]))
        with pytest.raises(ValueError, match="already registered"):
            register_discovery_method(name, mine)
        register_discovery_method(name, mine, override=True, column=1, description="class 1")
        res = get_discovery_method(name)(inputs)
        assert res.ranked_regions()[0] == int(np.argmax(inputs.region_probabilities[:, 1]))
    finally:
        if name in DISCOVERY_METHODS:
            DISCOVERY_METHODS.unregister(name)


def test_unknown_name_lists_close_matches():
    with pytest.raises(UnknownDiscoveryMethodError, match="Did you mean 'domino'") as err:
        get_discovery_method("domno")
    assert isinstance(err.value, KeyError)
    assert "Registered: ravl, ravl_gap_only" in str(err.value) and "ravl_gap_only" in str(err.value)
    with pytest.raises(ValueError, match="non-empty string"):
        register_discovery_method("", lambda i: i)
    with pytest.raises(TypeError, match="callable"):
        register_discovery_method("x_not_callable", 3)
