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
