"""ravl.utils.tasks: the serial backend, argument checks, and Ray only where it is installed."""

import math
import subprocess
import sys

import pytest

from ravl.exceptions import MissingDependencyError
from ravl.utils.tasks import BACKENDS, run_tasks


def test_serial_runs_every_task_in_order():
    out = list(run_tasks(math.factorial, [3, 0, 5], progress=False))
    assert out == [(3, 6), (0, 1), (5, 120)]
    assert list(run_tasks(math.factorial, [], progress=False)) == []
    assert BACKENDS == ("serial", "ray")


def test_serial_propagates_the_task_error():
    with pytest.raises(ValueError, match="negative"):
        list(run_tasks(math.factorial, [1, -1], progress=False))


@pytest.mark.parametrize("kw, msg", [
    ({"backend": "dask"}, r"The 'backend' parameter of run_tasks must be one of \{'serial', 'ray'\}. Got 'dask'"),
    ({"num_workers": 0}, r"The 'num_workers' parameter of run_tasks must be an int in \[1, inf\). Got 0 instead."),
    ({"threads": 1.5}, r"The 'threads' parameter of run_tasks must be an int in \[1, inf\). Got 1.5 instead."),
    ({"ray_address": "auto"}, r"The 'ray_address' parameter of run_tasks is only used with backend='ray'"),
])
def test_bad_arguments_fail_before_any_work(kw, msg):
    with pytest.raises(ValueError, match=msg):
        run_tasks(math.factorial, [1], **kw)


def test_ray_missing_gives_the_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    with pytest.raises(MissingDependencyError, match=r"pip install 'ravl\[ray\]'"):
        list(run_tasks(math.factorial, [1], backend="ray", progress=False))


def test_benchmark_modules_do_not_import_ray():
    code = ("import sys, ravl, ravl.utils.tasks, ravl.benchmarks.discovery\n"
            "from ravl.cli import build_parser\n"
            "build_parser().parse_args(['benchmark', 'discover', '--backend', 'ray'])\n"
            "print([m for m in ('ray', 'umap') if m in sys.modules])\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "[]"


@pytest.fixture(scope="module")
def local_ray():
    """A private local Ray instance with 2 CPUs, shared by the Ray tests of this module."""
    ray = pytest.importorskip("ray")
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()


def test_ray_runs_every_task_and_reraises_the_original_error(local_ray):
    out = list(run_tasks(math.factorial, [3, 0, 5, 4], backend="ray", num_workers=2, progress=False))
    assert sorted(out) == [(0, 1), (3, 6), (4, 24), (5, 120)]
    with pytest.raises(ValueError, match="negative"):
        list(run_tasks(math.factorial, [2, -1], backend="ray", num_workers=2, progress=False))
    assert local_ray.is_initialized()  # a connection the caller made is left open
