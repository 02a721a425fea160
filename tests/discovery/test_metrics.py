"""Precision@k, by hand."""

from __future__ import annotations

import pytest

from ravl.discovery import precision_at_k

ATTRS = ["red_square", "nine", "empty", "red_square", "one", "red_square"]


def test_attributes_in_rank_order():
    ranked = ["red_square", "nine", "red_square", "empty", "red_square"]
    assert precision_at_k(ranked, "red_square", k=5) == pytest.approx(3 / 5)
    assert precision_at_k(ranked, "red_square", k=2) == pytest.approx(1 / 2)
    assert precision_at_k(ranked, "red_square", k=1) == 1.0


def test_region_indices_with_ground_truth():
    assert precision_at_k([5, 3, 1, 0], "red_square", k=4, region_attributes=ATTRS) == pytest.approx(3 / 4)
    assert precision_at_k([4, 2], "red_square", k=2, region_attributes=ATTRS) == 0.0


def test_fewer_regions_than_k_divides_by_k():
    # 3 ranked regions, all correct: 3 hits out of the 10 places
    assert precision_at_k([0, 3, 5], "red_square", k=10, region_attributes=ATTRS) == pytest.approx(0.3)
    assert precision_at_k([], "red_square", k=10) == 0.0


def test_several_positive_attributes():
    assert precision_at_k(["one", "nine", "empty", "one"], {"one", "nine"}, k=4) == pytest.approx(3 / 4)


def test_only_the_top_k_count():
    ranked = ["empty"] * 10 + ["red_square"] * 5
    assert precision_at_k(ranked, "red_square") == 0.0  # default k = 10


@pytest.mark.parametrize("args, kwargs, match", [
    ((["a"], "a"), {"k": 0}, r"'k' parameter of precision_at_k must be an int in \[1, inf\)"),
    (([0, 1], "a"), {}, "pass region_attributes"),
    (([0, 9], "a"), {"region_attributes": ["a", "b"]}, r"region indices in \[0, 2\)"),
    ((["a"], []), {}, "non-empty collection"),
])
def test_errors(args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        precision_at_k(*args, **kwargs)


def test_with_a_discovery_result_ranking():
    from ravl.discovery.result import DiscoveredFeature, RankedRegion

    feat = DiscoveredFeature(1, 0, "nine", 1.0, 1.0, True, 2, 2, 3, (),
                             (RankedRegion(3, 1, 1.0), RankedRegion(2, 1, 0.5)))
    ranked = [r.region_index for r in feat.regions]
    assert precision_at_k(ranked, "red_square", k=2, region_attributes=ATTRS) == 0.5
