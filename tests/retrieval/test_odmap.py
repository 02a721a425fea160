"""ODmAP@k on hand-built rankings; every expected value is worked out in the comments."""

import json

import numpy as np
import pytest

from ravl.exceptions import InvalidParameterError
from ravl.retrieval.odmap import mentions, odmap_at_k, odmap_relevance, rankings_from_scores

CAPTIONS = ["a dog with a frisbee",     # 0, image 0
            "a dog on grass",           # 1, image 0
            "a cat on a sofa",          # 2, image 1
            "two Frisbees in the air",  # 3, image 2
            "a dog running"]            # 4, image 2
OWNER = [0, 0, 1, 2, 2]
# query 0: image 0 without its frisbee; query 1: image 2 without its dog
SOURCE, REMOVED = [0, 2], ["frisbee", "dog"]
RANKINGS = np.array([[0, 1, 3, 4, 2], [4, 3, 0, 2, 1]])


def test_mentions_whole_words_plurals_and_synonyms():
    assert mentions("Two Frisbees", "frisbee") and mentions("a red bus", "bus") and mentions("three buses", "bus")
    assert not mentions("a hotdog stand", "dog") and not mentions("frisbeeish", "frisbee")
    assert mentions("a flying disc", ["frisbee", "disc"]) and mentions("a hot dog", "hot dog")
    with pytest.raises(InvalidParameterError):
        mentions("x", [])


def test_relevance_rules():
    own, mention = odmap_relevance(SOURCE, REMOVED, CAPTIONS, OWNER, rule="own")
    assert [r.tolist() for r in own] == [[1], [3]]
    assert mention.tolist() == [[True, False, False, True, False], [True, True, False, False, True]]
    anyr, _ = odmap_relevance(SOURCE, REMOVED, CAPTIONS, OWNER, rule="any")
    assert [r.tolist() for r in anyr] == [[1, 2, 4], [2, 3]]
    with pytest.raises(InvalidParameterError, match="'rule' parameter"):
        odmap_relevance(SOURCE, REMOVED, CAPTIONS, OWNER, rule="mine")


def test_odmap_own_rule_by_hand():
    rel, mention = odmap_relevance(SOURCE, REMOVED, CAPTIONS, OWNER, rule="own")
    res = odmap_at_k(RANKINGS, rel, 3, mention=mention, relevance="own")
    # q0 top 3 = 0 1 3: rel F T F, R=1 -> P(2)*1 / min(3, 1) = 1/2
    # q1 top 3 = 4 3 0: rel F T F, R=1 -> 1/2
    assert res.per_query == pytest.approx((0.5, 0.5)) and res.value == pytest.approx(0.5)
    # false hits: q0 captions 0 and 3 mention the frisbee, q1 captions 4 and 0 the dog -> 2/3 each
    assert res.false_hits_at_k == pytest.approx(2 / 3)
    d = json.loads(json.dumps(res.to_dict()))
    assert d["reconstructed"] is True and d["relevance"] == "own" and d["k"] == 3 and d["n_queries"] == 2


def test_odmap_any_rule_by_hand():
    rel, _ = odmap_relevance(SOURCE, REMOVED, CAPTIONS, OWNER, rule="any")
    res = odmap_at_k(RANKINGS, rel, 3)
    # q0: rel F T F, R=3 -> (1/2) / 3 = 1/6;  q1: rel F T F, R=2 -> (1/2) / 2 = 1/4
    assert res.per_query == pytest.approx((1 / 6, 1 / 4))
    assert res.value == pytest.approx((1 / 6 + 1 / 4) / 2)
    # k = 5, q0: hits at ranks 2 (c1), 4 (c4), 5 (c2): (1/2 + 2/4 + 3/5) / min(5, 3)
    assert odmap_at_k(RANKINGS[:1], rel[:1], 5).value == pytest.approx((1 / 2 + 2 / 4 + 3 / 5) / 3)


def test_boolean_relevance_skipped_queries_and_rankings_from_scores():
    rel = np.array([[False, True, False], [False, False, False]])
    res = odmap_at_k([[1, 0, 2], [0, 1, 2]], rel, 2)
    assert res.value == 1.0 and res.n_queries == 1 and res.n_skipped == 1 and np.isnan(res.per_query[1])
    assert res.to_dict()["per_query"] == [1.0, None]
    s = np.array([[0.1, 0.5, 0.5, 0.9]])
    assert rankings_from_scores(s, 3).tolist() == [[3, 1, 2]]
    assert rankings_from_scores(s, 10).shape == (1, 4)
