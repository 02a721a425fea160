"""Retrieval ranking metrics on hand-built score matrices; every expected value is worked out below."""

import numpy as np
import pytest

from ravl.exceptions import InvalidParameterError
from ravl.retrieval.metrics import (
    average_precision_at_k,
    mean_average_precision,
    rank_relevance,
    recall_at_k,
    relevant_ranks,
)

# 3 images x 5 captions; captions 0, 1 belong to image 0, caption 2 to image 1, captions 3, 4 to image 2.
S = np.array([
    [0.9, 0.2, 0.8, 0.1, 0.3],  # ranking c0 c2 c4 c1 c3: own captions c0, c1 at ranks 1, 4
    [0.5, 0.6, 0.4, 0.7, 0.1],  # ranking c3 c1 c0 c2 c4: own caption c2 at rank 4
    [0.3, 0.3, 0.3, 0.2, 0.9],  # ranking c4 c0 c1 c2 c3 (ties keep gallery order): c3, c4 at ranks 5, 1
])
OWNER = np.array([0, 0, 1, 2, 2])
I2T_REL = [[0, 1], [2], [3, 4]]


def test_image_to_text_ranks_recall_and_map():
    ranks = relevant_ranks(S, I2T_REL)
    assert [r.tolist() for r in ranks] == [[1, 4], [4], [1, 5]]
    assert recall_at_k(ranks, 1) == pytest.approx(2 / 3)  # images 0 and 2
    assert recall_at_k(ranks, 3) == pytest.approx(2 / 3)
    assert recall_at_k(ranks, 4) == pytest.approx(1.0)
    # AP: image 0 (1/1 + 2/4)/2 = 0.75; image 1 1/4; image 2 (1/1 + 2/5)/2 = 0.7
    assert mean_average_precision(ranks) == pytest.approx((0.75 + 0.25 + 0.7) / 3)


def test_text_to_image_ranks_recall_and_map():
    ranks = relevant_ranks(S.T, [[int(i)] for i in OWNER])
    # c0 [.9 .5 .3]->img0 rank 1; c1 [.2 .6 .3]->img0 rank 3; c2 [.8 .4 .3]->img1 rank 2;
    # c3 [.1 .7 .2]->img2 rank 2; c4 [.3 .1 .9]->img2 rank 1
    assert [int(r[0]) for r in ranks] == [1, 3, 2, 2, 1]
    assert recall_at_k(ranks, 1) == pytest.approx(2 / 5)
    assert recall_at_k(ranks, 2) == pytest.approx(4 / 5)
    assert recall_at_k(ranks, 10) == pytest.approx(1.0)
    assert mean_average_precision(ranks) == pytest.approx((1 + 1 / 3 + 1 / 2 + 1 / 2 + 1) / 5)


def test_boolean_relevance_matrix_and_tensor_scores_agree_with_lists():
    import torch

    rel = np.zeros_like(S, dtype=bool)
    for q, idx in enumerate(I2T_REL):
        rel[q, idx] = True
    a = relevant_ranks(torch.tensor(S), rel, chunk_size=1)
    b = relevant_ranks(S, I2T_REL)
    assert [x.tolist() for x in a] == [x.tolist() for x in b]


def test_ties_rank_by_gallery_index():
    s = np.array([[0.3, 0.3, 0.3]])
    assert relevant_ranks(s, [[0]])[0].tolist() == [1]
    assert relevant_ranks(s, [[2]])[0].tolist() == [3]


def test_matches_a_full_stable_sort_on_random_scores():
    rng = np.random.default_rng(0)
    s = rng.integers(0, 4, size=(7, 11)).astype(float)  # many ties
    rel = [sorted(rng.choice(11, size=int(rng.integers(1, 4)), replace=False).tolist()) for _ in range(7)]
    got = relevant_ranks(s, rel, chunk_size=3)
    for q in range(7):
        order = np.argsort(-s[q], kind="stable")
        want = sorted(int(np.flatnonzero(order == j)[0]) + 1 for j in rel[q])
        assert got[q].tolist() == want


def test_queries_without_relevant_items_are_left_out():
    ranks = relevant_ranks(S, [[0], [], [4]])
    assert ranks[1].size == 0
    assert recall_at_k(ranks, 1) == 1.0 and mean_average_precision(ranks) == 1.0
    assert np.isnan(recall_at_k([np.zeros(0)], 1))


def test_average_precision_at_k_by_hand():
    rel = [True, False, True, False, False]
    # P(1) = 1, P(3) = 2/3; min(k, R) = min(3, 2) = 2
    assert average_precision_at_k(rel, 3, 2) == pytest.approx((1 + 2 / 3) / 2)
    assert average_precision_at_k(rel, 1, 2) == pytest.approx(1.0)
    # R = 5 relevant in the gallery, hits at ranks 2, 3: (1/2 + 2/3) / min(3, 5)
    assert average_precision_at_k([False, True, True], 3, 5) == pytest.approx((1 / 2 + 2 / 3) / 3)
    assert average_precision_at_k([False, False], 2, 1) == 0.0
    assert np.isnan(average_precision_at_k([False], 1, 0))
    assert rank_relevance([4, 0, 2], [2, 3]).tolist() == [False, False, True]


def test_bad_parameters_are_clear_errors():
    with pytest.raises(InvalidParameterError, match="one list of gallery indices per query"):
        relevant_ranks(S, [[0]])
    with pytest.raises(InvalidParameterError, match="outside"):
        relevant_ranks(S, [[5], [], []])
    with pytest.raises(InvalidParameterError, match=r"\[Q, G\]"):
        relevant_ranks(S[0], [[0]])
    with pytest.raises(InvalidParameterError, match="'k' parameter"):
        recall_at_k([np.array([1])], 0)
    with pytest.raises(InvalidParameterError, match="more than n_relevant"):
        average_precision_at_k([True, True], 2, 1)
