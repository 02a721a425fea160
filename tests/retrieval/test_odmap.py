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


def test_own_rule_counts_captions_with_the_same_text():
    caps = ["A dog  on grass", "a dog with a frisbee", "a dog on grass", "a cat"]
    rel, _ = odmap_relevance([0], ["frisbee"], caps, [0, 0, 1, 2], rule="own")
    assert rel[0].tolist() == [0, 2]  # caption 2 (image 1) reads the same as caption 0 of the source
    rel, _ = odmap_relevance([0], ["frisbee"], caps, [0, 0, 1, 2], rule="own", same_text=False)
    assert rel[0].tolist() == [0]
    # ranking 2, 1, 0: with same_text rel = T F T, R = 2 -> (1/1 + 2/3) / 2; without: F F T, R = 1 -> 1/3
    assert odmap_at_k([[2, 1, 0]], [[0, 2]], 3).value == pytest.approx((1 + 2 / 3) / 2)
    assert odmap_at_k([[2, 1, 0]], [[0]], 3).value == pytest.approx(1 / 3)


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


def test_evaluate_odmap_matches_the_parts(object_folder, tmp_path):
    from ravl.data.dataset import load_dataset
    from ravl.data.manipulation import manipulate_dataset
    from ravl.models import load_model
    from ravl.models.regions import embed_images, embed_texts
    from ravl.retrieval import evaluate_odmap, image_captions

    gallery = load_dataset(object_folder)
    manipulate_dataset(gallery, tmp_path / "q", object="red_square", progress=False)
    queries = load_dataset(tmp_path / "q")
    model = load_model("tiny", seed=0)
    caps = image_captions(gallery)
    flat = [c for cs in caps for c in cs]
    owner = np.repeat(np.arange(len(caps)), [len(c) for c in caps]).tolist()
    for edited in (False, True):
        # the text side of the manipulation: each query's edited caption joins its source image's captions
        g_caps = flat + (["the number is a nine"] * 3 if edited else [])
        g_owner = owner + ([0, 2, 4] if edited else [])
        s = embed_images(model, queries, progress=False) @ embed_texts(model, g_caps).numpy().T
        for rule in ("own", "any"):
            res = evaluate_odmap(model, queries, gallery, k=4, rule=rule, edited_captions=edited, progress=False)
            assert res.reconstructed and res.relevance == rule and res.n_queries == 3 and res.n_skipped == 0
            assert res.meta["n_gallery_captions"] == len(g_caps) and res.meta["edited_captions"] is edited
            rel, mention = odmap_relevance([0, 2, 4], ["red square"] * 3, g_caps, g_owner, rule=rule)
            want = odmap_at_k(rankings_from_scores(s, 4), rel, 4, mention=mention)
            assert res.value == pytest.approx(want.value)
            assert res.false_hits_at_k == pytest.approx(want.false_hits_at_k)
            # own: the source's second caption; with the edited captions also its edited one, whose text
            # ("the number is a nine") is that of the 3 odd images' first captions and of the 2 other
            # edited ones (same_text). any: 6 second captions + 3 square-free first ones (+ 3 edited)
            assert [len(r) for r in rel] == [[1, 1, 1], [7, 7, 7], [9, 9, 9], [12, 12, 12]][
                2 * (rule == "any") + edited]


def test_evaluate_odmap_needs_removal_records(object_folder):
    from ravl.data.dataset import load_dataset
    from ravl.exceptions import DatasetError
    from ravl.models import load_model
    from ravl.retrieval import evaluate_odmap

    ds = load_dataset(object_folder)
    with pytest.raises(DatasetError, match="no 'remove'"):
        evaluate_odmap(load_model("tiny", seed=0), ds, ds, progress=False)


def test_orientation_a_model_that_retrieves_the_removed_object_scores_lower():
    # the synthetic setting's case, by hand: the query is a "four with a ring" whose red square was
    # removed; gallery: its edited caption and three others
    caps = ["the number is a four with a red square and a ring",  # 0: names the removed object
            "the number is a four with a ring",                   # 1: the edited caption (source image 0)
            "the number is a four with a red square",             # 2: names it
            "the number is a two with a ring"]                    # 3
    owner = [0, 0, 1, 2]
    rel, mention = odmap_relevance([0], ["red square"], caps, owner, rule="any")
    assert rel[0].tolist() == [1, 3] and mention[0].tolist() == [True, False, True, False]
    fooled = rankings_from_scores(np.array([[0.9, 0.5, 0.8, 0.1]]), 2)  # ranks 0, 2: both name it
    right = rankings_from_scores(np.array([[0.2, 0.9, 0.1, 0.5]]), 2)   # ranks 1, 3: neither does
    bad, good = (odmap_at_k(r, rel, 2, mention=mention) for r in (fooled, right))
    assert bad.value == 0.0 and bad.false_hits_at_k == 1.0
    assert good.value == 1.0 and good.false_hits_at_k == 0.0
    # half right: ranks 2 (names it) then 1 -> P(2) = 1/2 at the one hit, / min(2, R=2) -> 1/4
    half = odmap_at_k(rankings_from_scores(np.array([[0.0, 0.5, 0.9, 0.1]]), 2), rel, 2, mention=mention)
    assert half.value == pytest.approx(0.25) and half.false_hits_at_k == 0.5
