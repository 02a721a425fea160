"""The catalogue of bad and hostile inputs: every case runs the real command line in a subprocess.

Each case asserts the exit code (2: a usage mistake, 1: the data, a checkpoint or the
environment, 0: a defined result), that stderr ends in one ``error:`` line naming the file, flag,
row or key and the fix, that no traceback is printed, and, where an earlier run wrote something,
that it is intact. ``docs/troubleshooting.md`` lists the messages.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ENV = {**os.environ, "RAVL_PROGRESS": "0", "PYTHONWARNINGS": "ignore::DeprecationWarning"}


def run(*args: str, cwd: Path | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    """``ravl ARGS`` in a fresh process."""
    return subprocess.run([sys.executable, "-m", "ravl", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=ENV, cwd=cwd)


def spawn(*args: str) -> subprocess.Popen:
    """``ravl ARGS`` started in the background."""
    return subprocess.Popen([sys.executable, "-m", "ravl", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=ENV)


def expect(res: subprocess.CompletedProcess, code: int, *patterns: str) -> str:
    """Assert the exit code, no traceback, and (for errors) one ``error:`` line matching every pattern."""
    out = res.stdout + res.stderr
    assert "Traceback" not in out, out[-3000:]
    assert res.returncode == code, f"exit {res.returncode}, expected {code}:\n{out[-3000:]}"
    if code:
        errors = [ln for ln in res.stderr.splitlines() if ln.startswith("error:")]
        assert len(errors) == 1, res.stderr[-3000:]
        for p in patterns:
            assert re.search(p, errors[0]), f"{p!r} not in {errors[0]!r}"
        return errors[0]
    for p in patterns:
        assert re.search(p, out), f"{p!r} not in the output:\n{out[-3000:]}"
    return out


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (relative path -> bytes), to check earlier outputs stay intact."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="session")
def cat_env(tmp_path_factory):
    """A small setting, a checkpoint fine-tuned on it for one epoch, and a discovery.json of that checkpoint.

    ``{"root", "setting", "train", "eval", "ckpt", "discovery"}``.
    """
    from ravl.cli import main

    root = tmp_path_factory.mktemp("catalogue")
    setting = root / "setting"
    assert main(["make-benchmark", "--out", str(setting), "--n-train", "600", "--n-eval", "200", "--quiet"]) == 0
    ckpt = root / "ckpt"
    assert main(["finetune", "--data", str(setting / "train"), "--out", str(ckpt), "--epochs", "2",
                 "--batch-size", "64", "--quiet"]) == 0
    disc = root / "disc"
    assert main(["discover", "--checkpoint", str(ckpt), "--data", str(setting / "eval"), "--out", str(disc),
                 "--no-report", "--quiet", "--k-min", "20", "--k-max", "24"]) == 0
    return {"root": root, "setting": setting, "train": setting / "train", "eval": setting / "eval", "ckpt": ckpt,
            "discovery": disc / "discovery.json"}


@pytest.fixture(scope="session")
def hand_disc(cat_env, hand_discovery):
    """A discovery.json whose feature is the planted red square (for mitigation cases)."""
    path = cat_env["root"] / "hand_discovery.json"
    d = hand_discovery(cat_env["eval"]).to_dict()
    d["meta"]["checkpoint"] = str(cat_env["ckpt"])
    path.write_text(json.dumps(d))
    return path
