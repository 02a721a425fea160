"""The mitigation benchmark: grid runner (resume, config guard, canonical rows), Table 3 summary, CLI."""

import json
import math

import numpy as np
import pytest

from ravl.benchmarks.grid import SettingSpec
from ravl.benchmarks.mitigation import (
    MitigationBenchmarkConfig,
    run_mitigation_grid,
    summarize_mitigation,
)
from ravl.exceptions import CheckpointError, UnknownNameError
from ravl.mitigation import MitigationOptions
from ravl.report.tables import format_mitigation_summary
from ravl.training import FinetuneConfig

TINY = MitigationBenchmarkConfig(n_train=600, n_eval=200, continue_epochs=1, threads=1,
                                 finetune=FinetuneConfig(epochs=2, batch_size=32))
SPEC = SettingSpec("red_square", "nine", 0.95, 0)
METHODS = ("standard", "vl-erm", "ravl", "ravl-continue")


@pytest.fixture(scope="module")
def tiny_grid(tmp_path_factory):
    work = tmp_path_factory.mktemp("mitigate_grid")
    rows = run_mitigation_grid([SPEC], work, TINY, methods=METHODS, progress=False)
    return work, rows


@pytest.mark.slow
def test_rows_carry_stage1_and_the_four_metrics(tiny_grid):
    work, rows = tiny_grid
    assert [r["method"] for r in rows] == list(METHODS)
    assert rows[0]["n_features"] >= 1 and rows[0]["discovered_class"] == "nine"  # a feature to mitigate
    for r in rows:
        assert r["setting"] == SPEC.key and r["feature"] == "red_square" and r["spurious_class"] == "nine"
        assert set(r) >= {"valid", "validity_gap", "precision_at_10", "discovered_class", "achieved_v"}
        assert set(r["metrics"]) == {"Image Overall", "Image Worst-Group", "Region Overall", "Region Worst-Group"}
        assert all(0.0 <= v <= 1.0 for v in r["metrics"].values())
    std, erm, ravl, cont = rows
    assert std["reused_audited"] is True and std["start"] == "init"
    # the standard row is the audited model itself, evaluated once and cached
    cached = json.loads((work / SPEC.key / "model" / "benchmark_eval.json").read_text())
    assert cached["metrics"] == std["metrics"]
    # every group (10 classes x with/without) at image and region level, and the same fields on eval val
    assert len(std["groups"]["image"]) == 20 and len(std["groups"]["region"]) == 20
    assert min(g["accuracy"] for g in std["groups"]["image"]) == std["metrics"]["Image Worst-Group"]
    from ravl.data import load_dataset
    from ravl.data.synthetic import CAPTION_TEMPLATES
    from ravl.evaluation import evaluate
    from ravl.models import load_model

    val = evaluate(load_model(None, checkpoint=work / SPEC.key / "model"),
                   load_dataset(work / SPEC.key / "setting" / "eval"), split="val", templates=CAPTION_TEMPLATES,
                   spurious_feature="red_square", progress=False)
    assert std["val"]["metrics"] == pytest.approx(val.summary_metrics())
    assert [g["accuracy"] for g in std["val"]["groups"]["image"]] == pytest.approx([g.accuracy for g in val.image.groups])
    assert ravl["start"] == "init" and cont["start"] == "checkpoint" and ravl["labelling_precision"] > 0.9
    cfg = json.loads((work / SPEC.key / "ravl-continue" / "config.json").read_text())
    assert cfg["mitigation"]["start"] == "checkpoint" and cfg["finetune"]["epochs"] == TINY.continue_epochs
    assert cfg["mitigation"]["options"]["features"] == "class"
    # timings live outside results.jsonl, which holds deterministic values only
    res = [json.loads(x) for x in (work / "results.jsonl").read_text().splitlines()]
    assert res == rows and not any("method_seconds" in r for r in res)
    tim = [json.loads(x) for x in (work / "timings.jsonl").read_text().splitlines()]
    assert {(t["setting"], t["method"]) for t in tim} == {(SPEC.key, m) for m in METHODS}


@pytest.mark.slow
def test_rerun_resumes_without_recomputing(tiny_grid, monkeypatch):
    import ravl.benchmarks.mitigation as mb

    work, rows = tiny_grid

    def boom(*a, **k):
        raise AssertionError("a finished (setting, method) row was recomputed")

    monkeypatch.setattr(mb, "_mitigate_one", boom)
    monkeypatch.setattr(mb, "_stage1", boom)
    assert run_mitigation_grid([SPEC], work, TINY, methods=METHODS, progress=False) == rows
    # a subset of methods, in another order, comes back in the requested order
    assert [r["method"] for r in run_mitigation_grid([SPEC], work, TINY, methods=("ravl", "standard"),
                                                     progress=False)] == ["ravl", "standard"]


@pytest.mark.slow
def test_refuses_another_configuration(tiny_grid):
    work, _ = tiny_grid
    with pytest.raises(CheckpointError, match="another configuration"):
        run_mitigation_grid([SPEC], work, MitigationBenchmarkConfig(n_train=600, n_eval=200,
                                                                    finetune=FinetuneConfig(epochs=3)),
                            methods=("standard",), progress=False)


def test_config_round_trip_and_validation():
    d = TINY.to_dict()
    assert MitigationBenchmarkConfig.from_dict(json.loads(json.dumps(d))) == TINY
    with pytest.raises(ValueError, match="Unknown MitigationBenchmarkConfig field"):
        MitigationBenchmarkConfig.from_dict({**d, "lr": 1})
    with pytest.raises(ValueError, match="'region_mode' parameter"):
        MitigationBenchmarkConfig(options=MitigationOptions(region_mode="pixels"))
    with pytest.raises(UnknownNameError, match="Unknown mitigation method 'magic'"):
        run_mitigation_grid([SPEC], "unused", TINY, methods=("ravl", "magic"), progress=False)
    with pytest.raises(UnknownNameError, match="Unknown mitigation method 'ravel'.*Did you mean 'ravl'"):
        MitigationBenchmarkConfig(method_configs={"ravel": {"lam": 0.5}})
    with pytest.raises(ValueError, match="Unknown option\\(s\\) \\['lamda'\\] for mitigation method 'ravl'"):
        MitigationBenchmarkConfig(method_configs={"ravl": {"lamda": 0.5}})
    # only the fields that differ from the method's defaults are kept
    cfg = MitigationBenchmarkConfig(method_configs={"ravl": {"lam": 1.0, "tau": 0.1}, "vl-gdro": {"eta": 0.01}})
    assert cfg.method_configs == {"ravl": {"tau": 0.1}}
    assert MitigationBenchmarkConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    # the start: absent from the record for the default (earlier work folders resume), kept otherwise
    assert "init" not in d
    pre = MitigationBenchmarkConfig(init="pretrained")
    assert pre.to_dict()["init"] == "pretrained"
    assert MitigationBenchmarkConfig.from_dict(json.loads(json.dumps(pre.to_dict()))) == pre
    with pytest.raises(ValueError, match="'init' parameter of MitigationBenchmarkConfig"):
        MitigationBenchmarkConfig(init="imagenet")


def _row(setting, method, p10, iwg, io=0.9, valid=True):
    return {"setting": setting, "method": method, "valid": valid, "precision_at_10": p10,
            "metrics": {"Image Overall": io, "Image Worst-Group": iwg, "Region Overall": io, "Region Worst-Group": None}}


def test_summary_means_intervals_thresholds_and_paired_deltas():
    from scipy import stats

    rows = [_row("a", "standard", 1.0, 0.2), _row("a", "ravl", 1.0, 0.5),
            _row("b", "standard", 0.7, 0.4), _row("b", "ravl", 0.7, 0.6),
            _row("c", "standard", 0.9, 0.0), _row("c", "ravl", 0.9, 0.4),
            _row("d", "standard", 0.5, 0.1), _row("d", "ravl", 0.5, 0.9),      # P@10 too low: left out
            _row("e", "standard", 1.0, 0.0, valid=False), _row("e", "ravl", 1.0, 1.0, valid=False)]
    s = summarize_mitigation(rows)
    assert s["n_settings"] == 5 and s["n_valid"] == 4
    b6, b8 = s["thresholds"]
    assert b6["threshold"] == 0.6 and b6["settings"] == ["a", "b", "c"] and b8["settings"] == ["a", "c"]
    ravl6 = next(e for e in b6["methods"] if e["method"] == "ravl")
    x = np.array([0.5, 0.6, 0.4])
    assert ravl6["Image Worst-Group"]["mean"] == pytest.approx(x.mean())
    assert ravl6["Image Worst-Group"]["ci95"] == pytest.approx(stats.t.ppf(0.975, 2) * x.std(ddof=1) / math.sqrt(3))
    d = np.array([0.3, 0.2, 0.4])  # paired: ravl - standard per setting
    assert ravl6["delta"]["Image Worst-Group"]["mean"] == pytest.approx(d.mean())
    assert ravl6["delta"]["Image Worst-Group"]["ci95"] == pytest.approx(stats.t.ppf(0.975, 2) * d.std(ddof=1) / math.sqrt(3))
    assert ravl6["Region Worst-Group"] == {"mean": None, "ci95": None, "n": 0}
    ravl8 = next(e for e in b8["methods"] if e["method"] == "ravl")
    assert ravl8["n"] == 2 and ravl8["Image Worst-Group"]["mean"] == pytest.approx(0.45)
    md = format_mitigation_summary(s)
    assert "P@10 > 0.6 (n = 3)" in md and "| ravl | 90.0 ± 0.0 | 50.0 ± 24.8 | 90.0 ± 0.0 | – | 3 |" in md
    assert "| ravl | +0.0 ± 0.0 | +30.0 ± 24.8 |" in md
    # rows appended out of order (a resumed run) still tabulate in the benchmark's method order
    s2 = summarize_mitigation(rows[::-1])
    assert [e["method"] for e in s2["thresholds"][0]["methods"]] == ["standard", "ravl"]


def test_best_peer_paired_differences():
    rows = [_row("a", "standard", 1.0, 0.2), _row("a", "vl-gdro", 1.0, 0.6), _row("a", "upsample", 1.0, 0.3),
            _row("a", "ravl", 1.0, 0.7),
            _row("b", "standard", 1.0, 0.0), _row("b", "vl-gdro", 1.0, 0.4), _row("b", "upsample", 1.0, 0.5),
            _row("b", "ravl", 1.0, 0.6)]
    block = summarize_mitigation(rows, thresholds=(0.6,))["thresholds"][0]
    # peers: every method but the baseline and RaVL's rows; vl-gdro's mean 0.5 beats upsample's 0.4
    assert block["best_peer"] == "vl-gdro"
    ravl = next(e for e in block["methods"] if e["method"] == "ravl")
    assert ravl["delta_best_peer"]["Image Worst-Group"]["mean"] == pytest.approx((0.1 + 0.2) / 2)
    assert ravl["delta_best_peer"]["Image Worst-Group"]["n"] == 2
    md = format_mitigation_summary({"n_valid": 2, "n_settings": 2, "baseline": "standard", "thresholds": [block]})
    assert "Paired difference to the best peer, vl-gdro" in md and "| ravl | +0.0 ± 0.0 | +15.0 ± 63.5 |" in md


def _grow(setting, method, spurious, acc):
    """A row with image groups: ``acc`` maps (label, with) -> accuracy."""
    groups = [{"label": lab, "with": w, "accuracy": a, "n": 10} for (lab, w), a in acc.items()]
    return {"setting": setting, "method": method, "valid": True, "spurious_class": spurious,
            "metrics": {"Image Worst-Group": min(acc.values())},
            "groups": {"image": groups, "region": [{**g, "accuracy": 1.0} for g in groups]}}


def test_group_summary_by_hand():
    from ravl.benchmarks.mitigation import summarize_groups
    from ravl.report.tables import format_group_summary

    a = {("nine", True): 1.0, ("nine", False): 0.2, ("one", True): 0.3, ("one", False): 0.9,
         ("two", True): 0.5, ("two", False): 0.7}
    b = {("nine", True): 0.8, ("nine", False): 0.4, ("one", True): 0.1, ("one", False): 1.0,
         ("two", True): 0.9, ("two", False): 0.8}
    g = summarize_groups([_grow("s1", "standard", "nine", a), _grow("s2", "standard", "nine", b)])
    e = g["methods"][0]
    assert g["n_settings"] == 2 and e["method"] == "standard" and e["n"] == 2
    assert e["spurious class with feature"]["mean"] == pytest.approx(0.9)
    assert e["spurious class without feature"]["mean"] == pytest.approx(0.3)
    assert e["other classes with feature (worst)"]["mean"] == pytest.approx((0.3 + 0.1) / 2)
    assert e["other classes with feature (mean)"]["mean"] == pytest.approx((0.4 + 0.5) / 2)
    assert e["other classes without feature (mean)"]["mean"] == pytest.approx((0.8 + 0.9) / 2)
    assert e["Image Worst-Group"]["mean"] == pytest.approx((0.2 + 0.1) / 2)
    assert e["region: other classes with feature (worst)"]["mean"] == pytest.approx(1.0)
    # t(0.975, 1 df) = 12.706, sd = 0.1414 over 2 settings -> half-width 1.271
    assert "| standard | 90.0 ± 127.1 | 30.0 ± 127.1 | 20.0 ± 127.1 | 45.0 ± 63.5 |" in format_group_summary(g)


@pytest.mark.slow
def test_cli_writes_tables_and_chart(tiny_grid, capsys):
    from ravl.cli import main

    work, rows = tiny_grid
    argv = ["benchmark", "mitigate", "--out", str(work), "--features", "red_square", "--spurious-classes", "nine",
            "--methods", *METHODS, "--n-train", "600", "--n-eval", "200", "--epochs", "2", "--continue-epochs", "1",
            "--batch-size", "32", "--threads", "1", "--quiet"]
    assert main(argv) == 0  # everything is cached: nothing is recomputed
    out = capsys.readouterr().out
    assert "Settings with Stage-1 P@10 > 0.6" in out and "wrote" in out
    assert (work / "summary.md").read_text().startswith("Valid settings:")
    assert (work / "mitigation.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    back = json.loads((work / "summary.json").read_text())
    assert back["config"] == TINY.to_dict()
    assert back["thresholds"] == json.loads(json.dumps(summarize_mitigation(rows)["thresholds"]))
    header = (work / "summary.csv").read_text().splitlines()[0]
    assert header.startswith("p_at_10_above,method,n_settings,Image Overall mean")
    # another recipe in the same folder is refused with a clear error
    assert main([*argv, "--lam", "0.5"]) == 1
    assert "another configuration" in capsys.readouterr().err
    # a method option of a method the grid does not run is a usage error
    assert main([*argv[:9], "standard", "vl-erm", *argv[13:], "--lam", "0.5"]) == 2
    assert "--lam is an option of method(s) ravl" in capsys.readouterr().err


@pytest.mark.slow
def test_ray_backend_gives_the_same_rows(tiny_grid, tmp_path):
    pytest.importorskip("ray")
    work, rows = tiny_grid
    methods = ("standard", "vl-erm")
    got = run_mitigation_grid([SPEC], tmp_path, TINY, methods=methods, backend="ray", num_workers=1, progress=False)
    assert got == [r for r in rows if r["method"] in methods]
    assert (tmp_path / "results.jsonl").read_text() == "".join(json.dumps(r) + "\n" for r in got)
