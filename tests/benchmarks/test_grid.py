"""The pieces every benchmark grid shares."""

import json

import pytest

from ravl.benchmarks.grid import check_config_file
from ravl.exceptions import CheckpointError


def test_a_failed_first_run_does_not_block_the_corrected_command(tmp_path):
    path = tmp_path / "benchmark_config.json"
    check_config_file(path, {"n_train": 5}, has_results=False)       # a run that then failed on its bad option
    assert json.loads(path.read_text()) == {"n_train": 5}
    check_config_file(path, {"n_train": 500}, has_results=False)     # the corrected command takes the folder over
    assert json.loads(path.read_text()) == {"n_train": 500}
    with pytest.raises(CheckpointError, match="holds the results of a benchmark run with another configuration"):
        check_config_file(path, {"n_train": 600}, has_results=True)  # finished rows are never mixed
    assert json.loads(path.read_text()) == {"n_train": 500}
    path.write_text("{not json")                                      # a damaged file with no result behind it
    check_config_file(path, {"n_train": 500}, has_results=False)
    assert json.loads(path.read_text()) == {"n_train": 500}


def test_grid_starts_scratch_and_pretrained():
    import torch

    from ravl.benchmarks.discovery import BenchmarkConfig
    from ravl.benchmarks.grid import grid_init_record
    from ravl.mitigation.api import load_init_model
    from ravl.models import load_model

    assert grid_init_record("scratch", 3) == {"model": "tiny", "seed": 3, "checkpoint": None}
    rec = grid_init_record("pretrained", 3)
    assert rec == {"model": "tiny", "seed": 3, "checkpoint": None, "pretrained": "synthetic"}
    shipped = load_model("tiny", pretrained="synthetic").module.state_dict()
    got = load_init_model(rec).module.state_dict()
    assert all(torch.equal(got[k], v) for k, v in shipped.items())       # the seed does not change them
    with pytest.raises(ValueError, match="Unknown grid start 'imagenet'"):
        grid_init_record("imagenet", 0)
    # the discovery grid's config: "init" recorded only when not the default (old folders resume)
    assert "init" not in BenchmarkConfig().to_dict()
    cfg = BenchmarkConfig(init="pretrained")
    assert BenchmarkConfig.from_dict(cfg.to_dict()) == cfg and cfg.to_dict()["init"] == "pretrained"
    with pytest.raises(ValueError, match="'init' parameter of BenchmarkConfig"):
        BenchmarkConfig(init="imagenet")
