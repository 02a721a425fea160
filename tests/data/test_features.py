"""Tests of the spurious-feature painters and their registry (ravl.data.features)."""

from __future__ import annotations

import numpy as np
import pytest

from ravl.data import features
from ravl.data.features import SpuriousFeature, get_feature, list_features, register_feature, render_feature

BLACK = (0, 0, 0)


@pytest.fixture
def registry(monkeypatch):
    """Give the test its own copy of the registry so registrations do not leak."""
    monkeypatch.setattr(features.FEATURES, "_entries", dict(features.FEATURES._entries))
    features._render_cached.cache_clear()
    yield features.FEATURES
    features._render_cached.cache_clear()


def colours(tile: np.ndarray) -> set[tuple[int, int, int]]:
    return {tuple(int(v) for v in c) for c in np.unique(tile.reshape(-1, 3), axis=0)}


def test_builtin_features_are_registered():
    assert {"red_square", "ring", "stripes"} <= set(list_features())
    assert list_features()[:3] == ["red_square", "ring", "stripes"]  # registration order
    kinds = {get_feature(n).kind for n in ("red_square", "ring", "stripes")}
    assert kinds == {"colour", "shape", "texture"}  # three different natures


def test_red_square_is_solid_pure_red():
    tile = render_feature("red_square", 28)
    assert tile.shape == (28, 28, 3) and tile.dtype == np.uint8
    assert colours(tile) == {(255, 0, 0)}


def test_ring_is_a_yellow_circle_outline():
    tile = get_feature("ring").render(28)
    assert colours(tile) == {BLACK, (255, 255, 0)}
    on = (tile != 0).any(-1)
    assert not on[14, 14] and not on[13, 13]          # hollow centre
    assert not on[0, 0] and not on[27, 27]            # corners outside the circle
    assert 0.15 < on.mean() < 0.45
    # symmetric under flips and transposition (a circle, centred)
    assert (on == on[::-1]).all() and (on == on[:, ::-1]).all() and (on == on.T).all()
    # crossing the ring along the middle row gives exactly two lit segments
    row = on[14].astype(int)
    assert np.count_nonzero(np.diff(row) == 1) == 2


def test_stripes_are_a_cyan_diagonal_texture():
    tile = get_feature("stripes").render(28)
    assert colours(tile) == {BLACK, (0, 255, 255)}
    on = (tile != 0).any(-1)
    assert 0.4 < on.mean() < 0.6
    # constant along anti-diagonals, alternating along rows: a striped texture
    assert all((on[y, x] == on[y + 1, x - 1]) for y in range(27) for x in range(1, 28))
    assert np.count_nonzero(np.diff(on[0].astype(int)) != 0) >= 6


def test_features_differ_pairwise_and_are_not_grey():
    tiles = {n: render_feature(n) for n in ("red_square", "ring", "stripes")}
    names = list(tiles)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert not np.array_equal(tiles[a], tiles[b])
        t = tiles[a].astype(int)
        # coloured: some pixel has unequal channels, so a feature never looks like a (grey) digit
        assert ((t[..., 0] != t[..., 1]) | (t[..., 1] != t[..., 2])).any()


@pytest.mark.parametrize("name", ["red_square", "ring", "stripes"])
@pytest.mark.parametrize("size", [8, 16, 28, 64])
def test_render_any_size(name, size):
    tile = render_feature(name, size)
    assert tile.shape == (size, size, 3) and tile.dtype == np.uint8
    assert tile.any()


def test_render_returns_a_fresh_copy():
    a = render_feature("red_square")
    a[:] = 0
    assert colours(render_feature("red_square")) == {(255, 0, 0)}


def test_render_bad_size():
    with pytest.raises(ValueError, match=r"'size' parameter of SpuriousFeature.render must be an int in \[4, inf\)"):
        get_feature("ring").render(2)


def test_unknown_feature_lists_known_and_suggests():
    with pytest.raises(ValueError) as exc:
        get_feature("red_sqare")
    msg = str(exc.value)
    assert "Unknown spurious feature 'red_sqare'" in msg and "Registered: red_square, ring, stripes" in msg
    assert "Did you mean 'red_square'?" in msg and "register_feature" in msg
    with pytest.raises(ValueError, match="Unknown spurious feature 3"):
        get_feature(3)


def test_register_feature_plain_and_decorator(registry):
    def blue(size):
        t = np.zeros((size, size, 3), np.uint8)
        t[..., 2] = 255
        return t

    assert register_feature("blue_square", blue, kind="colour", description="solid blue") is blue
    assert colours(render_feature("blue_square", 10)) == {(0, 0, 255)}

    @register_feature("checker", kind="texture")
    def checker(size):
        yy, xx = np.mgrid[0:size, 0:size]
        return np.where(((yy // 2 + xx // 2) % 2 == 0)[..., None], 255, 0).astype(np.uint8).repeat(3, -1)

    assert callable(checker)
    assert "checker" in list_features() and "blue_square" in list_features()
    f = get_feature("checker")
    assert isinstance(f, SpuriousFeature) and f.kind == "texture"
    assert colours(f.render(8)) == {BLACK, (255, 255, 255)}


def test_register_float_painter_is_converted(registry):
    register_feature("half_grey", lambda s: np.full((s, s, 3), 127.6))
    tile = render_feature("half_grey", 6)
    assert tile.dtype == np.uint8 and (tile == 128).all()


def test_register_duplicate_and_overwrite(registry):
    with pytest.raises(ValueError, match="already registered; pass override=True"):
        register_feature("ring", lambda s: np.zeros((s, s, 3), np.uint8))
    register_feature("ring", lambda s: np.zeros((s, s, 3), np.uint8), override=True)
    assert not render_feature("ring", 8).any()  # the cache was cleared


@pytest.mark.parametrize("name", ["empty", "nine", "Red", "", "a b", None])
def test_register_bad_names(registry, name):
    with pytest.raises(ValueError, match="'name' parameter of register_feature"):
        register_feature(name, lambda s: np.zeros((s, s, 3), np.uint8))


def test_register_not_callable(registry):
    with pytest.raises(ValueError, match="must be callable"):
        register_feature("thing", 42)


def test_painter_with_wrong_shape_or_values(registry):
    register_feature("flat", lambda s: np.zeros((s, s), np.uint8))
    with pytest.raises(ValueError, match=r"must return a \[8, 8, 3\] array"):
        render_feature("flat", 8)
    register_feature("hot", lambda s: np.full((s, s, 3), 300.0))
    with pytest.raises(ValueError, match=r"uint8 values in \[0, 255\]"):
        render_feature("hot", 8)
