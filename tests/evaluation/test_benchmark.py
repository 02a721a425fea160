import json

import numpy as np
import pytest

from ravl.evaluation.benchmark import BenchmarkConfig, SettingSpec, grid, run_grid, summarize
from ravl.exceptions import CheckpointError


def test_grid_order_and_keys():
    g = grid(["red_square", "ring"], ["nine"], [0.9, 0.99], [0, 1])
    assert len(g) == 8 and g[0] == SettingSpec("red_square", "nine", 0.9, 0)
    assert len({s.key for s in g}) == 8


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


@pytest.mark.slow
def test_run_grid_resumes_without_recomputing(tmp_path):
    cfg = BenchmarkConfig(n_train=400, n_eval=200, epochs=1, batch_size=64)
    specs = grid(["red_square"], ["nine"], [0.95])
    rows = run_grid(specs, tmp_path, cfg, methods=["ravl", "random"], progress=False)
    assert [r["method"] for r in rows] == ["ravl", "random"]
    assert all(0 <= r["precision_at_10"] <= 1 for r in rows)
    lines = (tmp_path / "results.jsonl").read_text().splitlines()
    assert len(lines) == 2 and json.loads(lines[0])["setting"] == specs[0].key
    again = run_grid(specs, tmp_path, cfg, methods=["ravl", "random"], progress=False)
    assert again == rows and len((tmp_path / "results.jsonl").read_text().splitlines()) == 2
    with pytest.raises(CheckpointError, match="another configuration"):
        run_grid(specs, tmp_path, BenchmarkConfig(n_train=500, n_eval=200, epochs=1), methods=["ravl"])
