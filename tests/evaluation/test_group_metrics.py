import numpy as np
import pytest

from ravl.evaluation.metrics import (
    AccuracyReport,
    EvaluationResult,
    check_setting_validity,
    group_accuracies,
    infer_spurious_feature,
)


def test_group_accuracies_hand_computed():
    classes = ["a", "b"]
    labels = np.array([0, 0, 0, 1, 1, 1, -1])
    preds = np.array([0, 1, 1, 1, 1, 0, 0])
    present = np.array([True, False, False, True, False, True, True])
    r = group_accuracies(preds, labels, classes, present)
    assert r.n == 6
    assert r.overall == pytest.approx(3 / 6)
    assert r.per_class["a"] == {"accuracy": pytest.approx(1 / 3), "n": 3}
    assert r.group("a", True).accuracy == 1.0 and r.group("a", True).n == 1
    assert r.group("a", False).accuracy == 0.0 and r.group("a", False).n == 2
    assert r.group("b", True).accuracy == 0.5 and r.group("b", False).accuracy == 1.0
    assert (r.worst_group.label, r.worst_group.feature_present) == ("a", False)


def test_group_accuracies_without_feature_and_empty_groups():
    r = group_accuracies(np.array([0, 0]), np.array([0, 0]), ["a", "b"], None)
    assert r.groups == () and r.worst_group is None and "b" not in r.per_class
    r = group_accuracies(np.array([0, 0]), np.array([0, 0]), ["a", "b"], np.array([True, True]))
    assert len(r.groups) == 1  # empty groups are left out, never reported as accuracy 0


def test_infer_spurious_feature():
    assert infer_spurious_feature(["one", "red_square", "empty"], ["one", "two"]) == "red_square"
    assert infer_spurious_feature(["one", "empty"], ["one"]) is None
    assert infer_spurious_feature(["a", "x", "y"], ["a"]) is None


def _result(acc_with, acc_without):
    labels = np.array([0] * 10 + [1] * 10)
    preds = labels.copy()
    present = np.array([True] * 5 + [False] * 5 + [True] * 5 + [False] * 5)
    preds[: 5 - int(acc_with * 5)] = 1
    preds[5: 5 + 5 - int(acc_without * 5)] = 1
    rep = group_accuracies(preds, labels, ["nine", "one"], present)
    return EvaluationResult("val", ("nine", "one"), "red_square", rep, None, 20, ("{}",))


def test_validity_rule():
    v = check_setting_validity(_result(1.0, 0.4), "nine")
    assert v.valid and v.gap == pytest.approx(0.6) and v.n_with == 5
    v = check_setting_validity(_result(0.8, 0.8), "nine")
    assert not v.valid and v.gap == pytest.approx(0.0)
    assert check_setting_validity(_result(0.6, 0.4), "nine", min_gap=0.2).valid
    assert not check_setting_validity(_result(0.6, 0.4), "nine", min_gap=0.3).valid


def test_validity_rule_needs_both_groups():
    rep = AccuracyReport(1.0, 1, {}, (), None)
    res = EvaluationResult("val", ("nine",), "red_square", rep, None, 1, ("{}",))
    with pytest.raises(ValueError, match="both with and without"):
        check_setting_validity(res, "nine")
    with pytest.raises(ValueError, match="min_gap"):
        check_setting_validity(_result(1, 0), "nine", min_gap=2)


def test_summary_metrics_are_the_four_table_3_metrics():
    from ravl.evaluation.metrics import SUMMARY_METRICS

    img = _result(1.0, 0.4).image                     # nine: 1.0 with, 0.4 without; one: all right
    labels = np.array([0] * 10 + [1] * 10)
    core = group_accuracies(np.where(np.arange(20) == 0, 1, labels), labels, ["nine", "one"],
                            np.array([True] * 5 + [False] * 5 + [True] * 5 + [False] * 5))
    res = EvaluationResult("test", ("nine", "one"), "red_square", img, core, 20, ("{}",))
    m = res.summary_metrics()
    assert tuple(m) == SUMMARY_METRICS
    assert m["Image Overall"] == pytest.approx(17 / 20) and m["Image Worst-Group"] == pytest.approx(0.4)
    assert m["Region Overall"] == pytest.approx(19 / 20) and m["Region Worst-Group"] == pytest.approx(0.8)
    bare = EvaluationResult("test", ("nine", "one"), None, group_accuracies(labels, labels, ["nine", "one"], None),
                            None, 20, ("{}",))
    assert bare.summary_metrics() == {"Image Overall": 1.0, "Image Worst-Group": None, "Region Overall": None,
                                      "Region Worst-Group": None}
