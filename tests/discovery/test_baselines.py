"""Discovery baselines: planted failure slices are found, both adaptations run, seeds are deterministic."""

from __future__ import annotations

import numpy as np
import pytest

from ravl.discovery import DiscoveryResult, precision_at_k
from ravl.discovery import baselines as B
from ravl.discovery.pipeline import DiscoveryInputs

METHODS = ["distilling_failures", "george", "domino", "spurious_aware"]


def planted(n_per_class: int = 60, n_classes: int = 3, dim: int = 32, base_err: float = 0.05, seed: int = 0,
            noise: float = 0.3) -> DiscoveryInputs:
    """3 classes, 4 regions per image (digit, feature or blank, 2 blanks); the feature (in half the
    images) makes the model predict class 0 ("c0"), so class-1/2 images with it are misclassified."""
    rng = np.random.default_rng(seed)
    basis = np.linalg.qr(rng.normal(size=(dim, dim)))[0]
    protos, feat, blank = basis[:n_classes], basis[n_classes], basis[n_classes + 1]
    n = n_per_class * n_classes
    y = np.repeat(np.arange(n_classes), n_per_class)
    has = rng.random(n) < 0.5
    yhat = y.copy()
    flip = rng.random(n) < base_err
    yhat[flip] = rng.integers(0, n_classes, int(flip.sum()))
    yhat[has] = 0
    emb, img, attrs = [], [], []
    for i in range(n):
        kinds = ["digit", "feature" if has[i] else "blank", "blank", "blank"]
        rng.shuffle(kinds)
        for k in kinds:
            v = {"digit": protos[y[i]], "feature": feat, "blank": blank}[k]
            emb.append(v + noise * rng.normal(size=dim) / np.sqrt(dim))
            img.append(i)
            attrs.append(k)
    emb = np.array(emb)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    img = np.array(img)
    img_emb = np.zeros((n, dim))
    np.add.at(img_emb, img, emb)
    img_emb /= np.linalg.norm(img_emb, axis=1, keepdims=True)
    logits = rng.normal(scale=0.3, size=(n, n_classes))
    logits[np.arange(n), yhat] += 3
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    rl = rng.normal(scale=0.3, size=(len(img), n_classes))
    for r, a in enumerate(attrs):
        if a != "blank":
            rl[r, 0 if a == "feature" else y[img[r]]] += 3
    q = np.exp(rl) / np.exp(rl).sum(1, keepdims=True)
    r = len(img)
    return DiscoveryInputs(
        classes=tuple(f"c{j}" for j in range(n_classes)), region_embeddings=emb, region_image_index=img,
        region_probabilities=q, image_embeddings=img_emb, image_labels=y, image_predictions=yhat,
        image_probabilities=p, region_file_names=tuple(f"{i}.png" for i in img),
        region_boxes=np.tile([0.0, 0.0, 28.0, 28.0], (r, 1)), region_index=np.tile(np.arange(4), n),
        region_attributes=tuple(attrs), region_mode="masked")


@pytest.fixture(scope="module")
def noisy():
    return planted()


@pytest.fixture(scope="module")
def clean():
    """No errors but the planted ones (Domino ranks tiny pure-error slices first on noisy data)."""
    return planted(base_err=0.0)


def p10(res: DiscoveryResult, inputs: DiscoveryInputs) -> float:
    return precision_at_k(res.ranked_regions(), "feature", k=10, region_attributes=inputs.region_attributes)


@pytest.mark.parametrize("method, adaptation, kwargs", [
    ("distilling_failures", "image", {}),
    ("distilling_failures", "region", {}),
    ("george", "image", {}),
    ("george", "region", {"cluster_score": "mean"}),
    ("spurious_aware", "image", {}),
    ("spurious_aware", "region", {}),
])
def test_finds_planted_slice_and_class(noisy, method, adaptation, kwargs):
    res = getattr(B, method)(noisy, adaptation=adaptation, random_state=0, **kwargs)
    assert isinstance(res, DiscoveryResult) and res.status == "ok"
    assert p10(res, noisy) >= 0.8
    assert res.top.class_name == "c0"
    assert res.meta["method"] == method and res.meta["adaptation"] == adaptation


@pytest.mark.parametrize("adaptation", ["image", "region"])
def test_domino_finds_planted_slice(clean, adaptation):
    res = B.domino(clean, adaptation=adaptation, random_state=0)
    assert p10(res, clean) >= 0.8
    assert res.meta["pca_components"] == 32


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("adaptation", ["image", "region"])
def test_deterministic_and_valid(noisy, method, adaptation):
    a = getattr(B, method)(noisy, adaptation=adaptation, random_state=3)
    b = getattr(B, method)(noisy, adaptation=adaptation, random_state=3)
    assert a.ranked_regions(all_features=True) == b.ranked_regions(all_features=True)
    assert [f.class_name for f in a.features] == [f.class_name for f in b.features]
    r = len(noisy.region_embeddings)
    for f in a.features:
        idx = f.region_indices
        assert len(set(idx)) == len(idx) and all(0 <= i < r for i in idx)
        assert all(reg.image_index == noisy.region_image_index[reg.region_index] for reg in f.regions)
    d = a.to_dict()
    assert DiscoveryResult.from_dict(d).to_dict() == d


def test_image_adaptation_orders_regions_best_first(noisy):
    res = B.distilling_failures(noisy, adaptation="image", random_state=0)
    grouped = B.distilling_failures(noisy, adaptation="image", image_regions="grouped", random_state=0)
    top = res.top.regions
    imgs = [r.image_index for r in top]
    n_img = len(set(imgs))
    assert len(set(imgs[:n_img])) == n_img  # one region per image first
    g = [r.image_index for r in grouped.top.regions]
    assert g[:4] == [g[0]] * 4  # all regions of the first image together
    assert sorted(r.region_index for r in grouped.top.regions) == sorted(r.region_index for r in top)


def test_random_is_a_seeded_permutation(noisy):
    a = B.random_baseline(noisy, random_state=1)
    r = len(noisy.region_embeddings)
    assert sorted(a.ranked_regions()) == list(range(r))
    assert a.ranked_regions() == np.random.default_rng(1).permutation(r).tolist()
    assert a.ranked_regions() != B.random_baseline(noisy, random_state=2).ranked_regions()
    assert a.top.class_name is None


def test_spurious_aware_with_supplied_tags(noisy):
    res = B.spurious_aware(noisy, tags=list(noisy.region_attributes), random_state=0)
    assert res.meta["vocabulary"] == "supplied"
    assert p10(res, noisy) == 1.0 and res.top.class_name == "c0"
    with pytest.raises(ValueError, match="one tag per region"):
        B.spurious_aware(noisy, tags=["a"], random_state=0)


def test_george_fixed_components_and_pca_fallback(noisy):
    res = B.george(noisy, n_components=4, reducer="pca", random_state=0)
    assert res.meta["reducer"] == ["pca"] and res.meta["n_components"] == 4
    assert p10(res, noisy) >= 0.8


def test_domino_mixture_em():
    rng = np.random.default_rng(0)
    z = np.r_[rng.normal(0, 0.1, (50, 2)), rng.normal(3, 0.1, (50, 2))]
    y = np.eye(2)[np.r_[np.zeros(50, int), np.ones(50, int)]]
    yhat = np.r_[np.tile([0.9, 0.1], (50, 1)), np.tile([0.9, 0.1], (50, 1))]
    mix = B.DominoMixture(n_slices=4, random_state=0).fit(z, y, yhat)
    resp = mix.predict_proba(z, y, yhat)
    assert np.allclose(resp.sum(1), 1)
    worst = int(np.argmax(mix.slice_scores()))
    assert resp[50:, worst].mean() > 0.9  # class-1 samples predicted as class 0: the error slice
    assert mix.slice_scores()[worst] == pytest.approx(0.9, abs=0.02)  # p_hat_0 - p_0 = 0.9 - 0


def test_validation_messages(noisy):
    with pytest.raises(ValueError, match="The 'adaptation' parameter of domino must be one of"):
        B.domino(noisy, adaptation="pixels")
    with pytest.raises(ValueError, match="The 'image_regions' parameter of george"):
        B.george(noisy, image_regions="shuffled")
    with pytest.raises(ValueError, match="c_grid"):
        B.distilling_failures(noisy, c_grid=[0.0])


def test_result_from_ranking_rejects_duplicates(noisy):
    with pytest.raises(ValueError, match="unique region indices"):
        B.result_from_ranking(noisy, [{"regions": [0, 0]}], "mine")
    res = B.result_from_ranking(noisy, [{"regions": [3, 1], "present": [3]}], "mine", meta={"note": "x"})
    assert res.ranked_regions() == [3, 1] and res.meta == {"method": "mine", "note": "x"}
    assert res.top.table  # a class table was computed from the present regions
