"""The discovery grid: presets, config, tables, and one small real grid shared by the end-to-end tests.

The module-scoped ``smoke_run`` builds two small settings once through ``ravl benchmark discover``
(every default method, serial backend); the smoke, resume and Ray tests reuse it.
"""

import json
import math

import numpy as np
import pytest

from ravl.benchmarks.discovery import (
    DEFAULT_METHODS,
    GRID_PRESETS,
    BenchmarkConfig,
    SettingSpec,
    grid,
    method_adaptation,
    run_grid,
    summarize,
    summary_tables,
)
from ravl.benchmarks.grid import file_lock
from ravl.cli import build_parser, main
from ravl.exceptions import CheckpointError, InvalidParameterError
from ravl.report.tables import format_discovery_summary

# Two settings the tiny CLIP learns at this small budget (validity gap well above 0.1).
SMOKE = ["--features", "red_square", "stripes", "--spurious-classes", "nine", "--strengths", "0.95",
         "--n-train", "1200", "--n-eval", "400", "--epochs", "3"]


def _discover(out, *extra):
    return main(["benchmark", "discover", "--out", str(out), *SMOKE, *extra, "--quiet"])


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "serial"
    assert _discover(out) == 0
    return out


def _lines(path):
    return path.read_text(encoding="utf-8").splitlines()


def test_grid_order_and_keys():
    g = grid(["red_square", "ring"], ["nine"], [0.9, 0.99], [0, 1])
    assert len(g) == 8 and g[0] == SettingSpec("red_square", "nine", 0.9, 0)
    assert len({s.key for s in g}) == 8
    assert SettingSpec.from_dict(g[3].to_dict()) == g[3]


def test_presets_and_default_methods():
    paper = GRID_PRESETS["paper"]
    specs = paper.specs()
    assert len(specs) == 150 and len({s.key for s in specs}) == 150  # 50 per feature
    assert {s.spurious_class for s in specs} == {"zero", "one", "two", "three", "four", "five", "six", "seven",
                                                 "eight", "nine"}
    assert {s.cramers_v for s in specs} == {0.7, 0.8, 0.9, 0.95, 0.99}
    assert (paper.config.n_train, paper.config.n_eval) == (10000, 2000)
    assert GRID_PRESETS["default"].config == BenchmarkConfig()
    assert type(paper).from_dict(json.loads(json.dumps(paper.to_dict()))) == paper
    assert {f"{m}_region" for m in ("distilling_failures", "george", "domino", "spurious_aware")} <= set(DEFAULT_METHODS)
    assert [method_adaptation(m) for m in ("ravl", "ravl_unweighted", "random", "george", "george_region")] == [
        "RaVL", "RaVL", "-", "A", "B"]


def test_cli_grid_resolution():
    from ravl.cli.benchmark_discover import plan as discover_plan

    def plan(*argv):
        return discover_plan(build_parser().parse_args(["benchmark", "discover", *argv]))

    specs, cfg, methods = plan("--grid", "paper")
    assert len(specs) == 150 and cfg == GRID_PRESETS["paper"].config and methods == list(DEFAULT_METHODS)
    specs, cfg, _ = plan("--grid", "paper", "--features", "ring", "--strengths", "0.9", "--n-train", "500")
    assert len(specs) == 10 and {s.feature for s in specs} == {"ring"} and cfg.n_train == 500
    assert cfg.n_eval == 2000
    specs, cfg, _ = plan()
    assert specs == GRID_PRESETS["default"].specs() and cfg == BenchmarkConfig()
    with pytest.raises(InvalidParameterError, match="--backend ray"):
        plan("--workers", "2")
    with pytest.raises(InvalidParameterError, match="threads"):
        plan("--threads", "0")


def test_config_validation_and_round_trip():
    cfg = BenchmarkConfig(n_train=10, threads=2)
    assert BenchmarkConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(ValueError, match=r"The 'threads' parameter of BenchmarkConfig must be an int in \[1, inf\). "
                                         r"Got 0 instead."):
        BenchmarkConfig(threads=0)
    with pytest.raises(ValueError, match="Unknown BenchmarkConfig field"):
        BenchmarkConfig.from_dict({"n_trian": 5})


def test_summarize_mean_and_t_interval():
    rows = [{"setting": f"s{i}", "method": "m", "valid": True, "cramers_v": 0.9, "precision_at_10": p,
             "class_correct": True} for i, p in enumerate([0.8, 1.0, 0.9])]
    rows.append({"setting": "bad", "method": "m", "valid": False, "cramers_v": 0.9, "precision_at_10": 0.0,
                 "class_correct": False})
    s = {(r["method"], r["cramers_v"]): r for r in summarize(rows)}
    r = s[("m", 0.9)]
    assert r["n_settings"] == 3 and r["p_at_10"] == pytest.approx(0.9)
    # t(0.975, 2) = 4.3027; sd = 0.1; half-width = 4.3027 * 0.1 / sqrt(3)
    assert r["ci95"] == pytest.approx(4.302653 * 0.1 / np.sqrt(3), rel=1e-4)


def test_summary_tables_ablation_adaptations_and_json():
    p = {"ravl": [1.0, 0.9], "ravl_gap_only": [0.8, 0.6], "ravl_influence_only": [0.2, 0.4],
         "ravl_unweighted": [0.5, 0.5], "random": [0.1, 0.1], "domino": [0.4, 0.2], "domino_region": [0.0, 0.0]}
    rows = [{"setting": f"s{i}", "method": m, "valid": True, "cramers_v": v, "precision_at_10": x,
             "class_correct": x > 0.5} for m, xs in p.items() for i, (v, x) in enumerate(zip([0.7, 0.9], xs))]
    rows.append({**rows[0], "setting": "bad", "valid": False, "precision_at_10": 0.0})
    s = summary_tables(rows, methods=list(p), wall_seconds=90.0, config=BenchmarkConfig())
    json.dumps(s, allow_nan=False)  # NaN written as null
    assert (s["n_settings"], s["n_valid"], s["strengths"]) == (3, 2, ["0.7", "0.9"])
    assert [a["method"] for a in s["ablation"]] == ["ravl_gap_only", "ravl_influence_only", "ravl_unweighted", "ravl"]
    full = s["ablation"][-1]
    assert full["all"]["p_at_10"] == pytest.approx(0.95) and full["by_strength"]["0.9"]["ci95"] is None
    assert {t["method"]: t["adaptation"] for t in s["methods"]}["domino_region"] == "B"
    assert s["closest_baseline"]["method"] == "domino"
    assert s["closest_baseline"]["ravl_ratio"] == pytest.approx(0.95 / 0.3)
    md = format_discovery_summary(json.loads(json.dumps(s)))
    assert "| domino | A: image-then-region |" in md and "| domino_region | B: region-as-sample |" in md
    assert "Table 2" in md and "| unweighted gap | ravl_unweighted | yes | yes | G_c | no (w = 1) |" in md
    assert "Valid settings: 2 of 3" in md and "Wall time of this run: 1.5 min" in md


@pytest.mark.slow
def test_smoke_ravl_finds_the_feature_and_ranks_first(smoke_run):
    s = json.loads((smoke_run / "summary.json").read_text())
    assert s["n_settings"] == 2 and s["n_valid"] == 2
    means = {t["method"]: t["all"]["p_at_10"] for t in s["methods"]}
    assert set(means) == set(DEFAULT_METHODS)
    assert means["ravl"] >= 0.9
    assert all(means["ravl"] >= x for x in means.values()), means
    rows = [json.loads(x) for x in _lines(smoke_run / "results.jsonl")]
    assert [(r["setting"], r["method"]) for r in rows] == [
        (k, m) for k in ("red_square-nine-v0.95-s0", "stripes-nine-v0.95-s0") for m in DEFAULT_METHODS]
    assert not any("seconds" in k for r in rows for k in r)
    timings = [json.loads(x) for x in _lines(smoke_run / "timings.jsonl")]
    assert len(timings) == len(rows) and all(t["method_seconds"] >= 0 and t["built"] for t in timings)
    md = (smoke_run / "summary.md").read_text()
    assert "Table 2" in md and "B: region-as-sample" in md
    assert (smoke_run / "p_at_10_vs_strength.png").stat().st_size > 0


@pytest.mark.slow
def test_rerun_and_interrupted_run_resume(smoke_run):
    res, tim = smoke_run / "results.jsonl", smoke_run / "timings.jsonl"
    before, n_timings = res.read_bytes(), len(_lines(tim))
    assert _discover(smoke_run) == 0  # finished: nothing recomputed, file unchanged
    assert res.read_bytes() == before and len(_lines(tim)) == n_timings
    # An interruption while the second setting's rows were being written: a cut line, two rows missing.
    lines = before.decode().splitlines(keepends=True)
    n = len(DEFAULT_METHODS)
    res.write_text("".join(lines[:n + 3]) + lines[n + 3][:25], encoding="utf-8")
    assert _discover(smoke_run) == 0
    assert res.read_bytes() == before  # the same rows, back in canonical order
    new = [json.loads(x) for x in _lines(tim)[n_timings:]]
    assert sorted(t["method"] for t in new) == sorted(DEFAULT_METHODS[3:])
    assert {t["setting"] for t in new} == {"stripes-nine-v0.95-s0"} and not any(t["built"] for t in new)
    with pytest.raises(CheckpointError, match="another configuration"):
        run_grid(grid(["red_square"], ["nine"], [0.95]), smoke_run, BenchmarkConfig(n_train=500), methods=["ravl"])


def test_one_grid_per_folder_and_one_builder_per_setting(smoke_run):
    import subprocess
    import sys

    from ravl.utils.outputs import OutputLockedError

    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom ravl.utils.outputs import output_lock\n"
         f"with output_lock({str(smoke_run)!r}, 'ravl benchmark discover'):\n"
         "    print('held', flush=True); time.sleep(60)"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(OutputLockedError, match=rf"being written by another run: `ravl benchmark discover` "
                                                    rf"\(pid {holder.pid} on "):
            run_grid(grid(["red_square"], ["nine"], [0.95]), smoke_run, BenchmarkConfig(), methods=["ravl"])
    finally:
        holder.kill()
        holder.wait()
    lock = smoke_run / "red_square-nine-v0.95-s0" / ".lock"
    with file_lock(lock) as held:
        assert held
        with file_lock(lock, blocking=False) as again:
            assert not again  # a second builder would wait here
    with file_lock(lock, blocking=False) as again:
        assert again


@pytest.mark.slow
def test_ray_backend_gives_byte_identical_results(smoke_run, tmp_path):
    """Both settings rebuilt from scratch in two Ray workers; results.jsonl equal byte for byte.

    George is left out here only for time: umap's numba compilation costs ~25-50 s in each fresh
    worker. (Run with every default method, the files were identical too.)
    """
    pytest.importorskip("ray")
    methods = [m for m in DEFAULT_METHODS if not m.startswith("george")]
    out = tmp_path / "ray"
    assert _discover(out, "--backend", "ray", "--workers", "2", "--methods", *methods) == 0
    serial = [x for x in _lines(smoke_run / "results.jsonl") if json.loads(x)["method"] in methods]
    assert (out / "results.jsonl").read_bytes() == "".join(x + "\n" for x in serial).encode()
    serial_pids = {json.loads(x)["pid"] for x in _lines(smoke_run / "timings.jsonl")}
    ray_pids = {json.loads(x)["pid"] for x in _lines(out / "timings.jsonl")}
    assert ray_pids and not ray_pids & serial_pids  # the settings ran in Ray workers
    assert all(json.loads(x)["built"] for x in _lines(out / "timings.jsonl"))
    r = json.loads((out / "summary.json").read_text())
    assert not math.isnan(r["methods"][0]["all"]["p_at_10"])


@pytest.mark.slow
def test_layout_grid_finds_the_feature_among_distractors(tmp_path):
    """3x3 images with two distractor objects tied to no class: RaVL still ranks the planted feature's
    regions first, and the layout is recorded in the folder's config."""
    out = tmp_path / "grid3"
    assert main(["benchmark", "discover", "--out", str(out), "--features", "red_square", "--spurious-classes", "nine",
                 "--strengths", "0.95", "--n-train", "1200", "--n-eval", "400", "--epochs", "3", "--init", "pretrained",
                 "--methods", "ravl", "--grid-size", "3", "--distractors", "2", "--quiet"]) == 0
    cfg = json.loads((out / "benchmark_config.json").read_text())
    assert cfg["layout"] == {"grid_size": 3, "distractors": 2} and cfg["init"] == "pretrained"
    setting = json.loads((out / "red_square-nine-v0.95-s0" / "setting" / "setting.json").read_text())
    assert setting["layout"]["distractor_features"] == ["ring", "stripes"]
    (row,) = [json.loads(x) for x in _lines(out / "results.jsonl")]
    assert row["valid"] and row["precision_at_10"] >= 0.9 and row["class"] == "nine", row
    assert row["n_regions"] == 200 * 9                        # nine cells per evaluation val image
