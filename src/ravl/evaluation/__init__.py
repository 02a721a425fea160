"""Evaluation: zero-shot accuracy overall, per class and per group; the setting validity rule."""

from ravl.evaluation.metrics import (
    SUMMARY_METRICS,
    AccuracyReport,
    EvaluationResult,
    GroupAccuracy,
    SettingValidity,
    check_setting_validity,
    evaluate,
    group_accuracies,
)

__all__ = ["AccuracyReport", "EvaluationResult", "GroupAccuracy", "SUMMARY_METRICS", "SettingValidity", "check_setting_validity",
           "evaluate", "group_accuracies"]
