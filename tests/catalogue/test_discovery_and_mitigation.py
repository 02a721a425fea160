"""Catalogue: `ravl discover`, `ravl mitigate`, `ravl benchmark` and discovery.json files."""

from __future__ import annotations

import json
import shutil
import signal
import time

import pytest
from PIL import Image

from .conftest import expect, run, snapshot, spawn


def _disc(cat_env, out, *extra):
    return run("discover", "--checkpoint", cat_env["ckpt"], "--data", cat_env["eval"], "--out", out, "--quiet",
               "--k-min", "20", "--k-max", "24", *extra)


@pytest.mark.parametrize(("extra", "pattern"), [
    (["--k-min", "1"], r"--k-min must be >= 2"),
    (["--k-min", "30", "--k-max", "24"], r"--k-min 30 is larger than --k-max 24"),
    (["--truth", "red_sqare"], r"--truth 'red_sqare' is not a region attribute", ),
    (["--method", "domno"], r"Unknown discovery method 'domno'.*Did you mean 'domino'"),
    (["--regions", "grid:0x3"], r"--regions: Invalid region source 'grid:0x3'"),
    (["--split", "vla"], r"--split: invalid choice: 'vla'"),
    (["--ray-workers", "2"], r"--ray-workers need --backend ray"),
    (["--backend", "ray", "--shard-batches", "0"], r"--shard-batches must be an int in \[1, inf\)"),
])
def test_discover_usage_mistakes_before_any_work(cat_env, tmp_path, extra, pattern):
    expect(_disc(cat_env, tmp_path / "d", *extra), 2, pattern)
    assert not (tmp_path / "d").exists()


def test_discover_is_byte_identical_and_one_unit(cat_env, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    expect(_disc(cat_env, a), 0)
    expect(_disc(cat_env, b), 0)
    assert (a / "discovery.json").read_bytes() == (b / "discovery.json").read_bytes()
    assert (a / "report.html").read_bytes() == (b / "report.html").read_bytes()
    assert (a / ".ravl-output").exists() and (a / "timings.json").exists()
    # a folder holding the user's own files is never replaced
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    expect(_disc(cat_env, mine), 2, r"already holds files that ravl did not write")
    assert (mine / "notes.txt").read_text() == "keep me"


def test_two_concurrent_discovers_on_one_out(cat_env, tmp_path):
    out = tmp_path / "d"
    # a long first run: the training split's 2,280 regions and a wide K sweep
    first = spawn("discover", "--checkpoint", cat_env["ckpt"], "--data", cat_env["train"], "--split", "train",
                  "--out", out, "--quiet", "--k-min", "20", "--k-max", "150")
    lock = tmp_path / ".d.ravl-lock"
    deadline = time.monotonic() + 120
    while not (lock.exists() and lock.read_text()) and time.monotonic() < deadline:
        time.sleep(0.1)
    second = _disc(cat_env, out)
    assert first.poll() is None, "the first run ended before the second one started"
    expect(second, 1, rf"is being written by another run: `ravl discover` \(pid {first.pid} on .*started ")
    assert first.wait(timeout=900) == 0, first.stderr.read()
    # the first run's output is complete and of one run
    names = set(snapshot(out))
    assert {"discovery.json", "report.html", "timings.json", ".ravl-output"} <= names
    d = json.loads((out / "discovery.json").read_text())
    assert d["meta"]["data"] == str(cat_env["train"].resolve()) and d["meta"]["split"] == "train"


def test_a_killed_discover_leaves_the_previous_complete_output(cat_env, tmp_path):
    out = tmp_path / "d"
    expect(_disc(cat_env, out), 0)
    before = snapshot(out)
    # kill the next run the moment it starts writing its outputs (its staging folder appears)
    proc = spawn("discover", "--checkpoint", cat_env["ckpt"], "--data", cat_env["eval"], "--out", out, "--quiet",
                 "--k-min", "21", "--k-max", "24")
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if any(tmp_path.glob(".d.staging-*/*")):
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.01)
    proc.wait()
    after = snapshot(out)
    assert after == before or after.keys() >= {"discovery.json", "report.html", ".ravl-output"}
    assert json.loads((out / "discovery.json").read_text())  # complete JSON, whichever run it is
    expect(_disc(cat_env, out), 0)  # the next run cleans up and succeeds
    assert not list(tmp_path.glob(".d.staging-*"))


# -- discovery.json files ---------------------------------------------------------------------

def _mit(cat_env, disc, out, *extra):
    return run("mitigate", "--checkpoint", cat_env["ckpt"], "--data", cat_env["train"], "--discovery", disc,
               "--out", out, "--epochs", "1", "--quiet", "--no-verify", *extra)


@pytest.mark.parametrize(("edit", "pattern"), [
    (None, r"nope.json does not exist"),
    ("", r"is empty"),
    ("truncate", r"is not valid JSON .* truncated or was edited"),
    ("drop_key", r"key 'features\[0\].cluster' is missing"),
    ("schema", r"schema 'ravl.discovery/7', which this ravl .* cannot read"),
    ("bad_type", r"'features\[0\].gap' has 'high', which is not a number"),
])
def test_broken_discovery_files(cat_env, hand_disc, tmp_path, edit, pattern):
    path = tmp_path / "nope.json"
    if edit is not None:
        text = hand_disc.read_text()
        d = json.loads(text)
        if edit == "":
            text = ""
        elif edit == "truncate":
            text = text[: len(text) // 2]
        elif edit == "drop_key":
            d["features"][0].pop("cluster")
            text = json.dumps(d)
        elif edit == "schema":
            d["schema"] = "ravl.discovery/7"
            text = json.dumps(d)
        elif edit == "bad_type":
            d["features"][0]["gap"] = "high"
            text = json.dumps(d)
        path = tmp_path / "discovery.json"
        path.write_text(text)
    expect(_mit(cat_env, path, tmp_path / "out"), 1, pattern)
    assert not (tmp_path / "out" / "training_state.pt").exists()


def test_discovery_classes_that_do_not_fit_the_data(cat_env, hand_disc, tmp_path):
    d = json.loads(hand_disc.read_text())
    d["classes"] = [c.upper() for c in d["classes"]]
    d["features"][0]["class"] = "NINE"
    path = tmp_path / "discovery.json"
    path.write_text(json.dumps(d))
    expect(_mit(cat_env, path, tmp_path / "out"), 1, r"discovery's classes do not fit the data", r"'NINE'")


@pytest.mark.parametrize(("extra", "code", "pattern"), [
    (["--features", "3"], 2, r"rank 3"),
    (["--assignment-quantile", "x"], 2, r"--assignment-quantile must be a number in \[0, 1\] or 'none'"),
    (["--lam", "-1"], 2, r"'lam' parameter of RegionAwareConfig"),
    (["--eta", "0.1"], 2, r"--eta is an option of method\(s\) vl-gdro"),
    (["--method", "ravel"], 2, r"invalid choice: 'ravel'"),
    (["--init", "x", "--init-seed", "1"], 2, r"not both"),
    (["--gpus-per-worker", "1"], 2, r"--gpus-per-worker need --backend ray"),
    (["--precision", "fp16", "--device", "cpu"], 2, r"--precision fp16 needs a CUDA device"),
])
def test_mitigate_usage_mistakes(cat_env, hand_disc, tmp_path, extra, code, pattern):
    expect(_mit(cat_env, hand_disc, tmp_path / "out", *extra), code, pattern)
    assert not (tmp_path / "out" / "training_state.pt").exists()


def test_discovery_data_replaced_under_mitigation(cat_env, hand_disc, tmp_path):
    """The images discovery examined were replaced: refused, naming the flag that overrides it.

    Overridden, the run goes on and prints how its labelling compares with the planted feature
    (here precision 0: the medoid is now a grey square), so the damage is visible, not silent.
    (A labelling with no spurious region at all is refused too: tests/mitigation/test_api.py.)
    """
    ev = tmp_path / "eval"
    shutil.copytree(cat_env["eval"], ev)
    d = json.loads(hand_disc.read_text())
    d["meta"]["data"] = str(ev)
    from ravl.data.dataset import load_dataset

    d["meta"]["data_fingerprint"] = load_dataset(ev).subset("val").fingerprint()
    path = tmp_path / "discovery.json"
    path.write_text(json.dumps(d))
    for r in load_dataset(ev).subset("val").records:
        Image.new("RGB", (56, 56), (90, 90, 90)).save(r.path)  # every image replaced, same names and sizes
    expect(_mit(cat_env, path, tmp_path / "out"), 1, r"changed since discovery examined it", r"--allow-data-change")
    assert not (tmp_path / "out" / "training_state.pt").exists()
    expect(_mit(cat_env, path, tmp_path / "out", "--allow-data-change"), 0, r"vs planted 'red_square': precision 0.000")


def test_checkpoint_without_its_start(cat_env, hand_disc, tmp_path):
    from ravl.models import load_model, save_checkpoint

    bare = save_checkpoint(load_model("tiny", seed=3), tmp_path / "bare")
    res = run("mitigate", "--checkpoint", bare, "--data", cat_env["train"], "--discovery", hand_disc, "--out",
              tmp_path / "out", "--epochs", "1", "--quiet", "--no-verify")
    expect(res, 1, r"records no 'init'", r"--init-seed")


# -- benchmark grids --------------------------------------------------------------------------

@pytest.mark.parametrize(("argv", "pattern"), [
    (["benchmark", "discover", "--methods", "domno"], r"Unknown discovery method 'domno'"),
    (["benchmark", "discover", "--workers", "2"], r"--workers and --ray-address are used with --backend ray only"),
    (["benchmark", "discover", "--threads", "0"], r"'threads'"),
    (["benchmark", "mitigate", "--methods", "nope"], r"--methods: invalid choice: 'nope'"),
    (["benchmark", "mitigate", "--lam", "0.5", "--methods", "standard"], r"--lam is an option of method\(s\) ravl"),
])
def test_benchmark_usage_mistakes_leave_nothing_behind(tmp_path, argv, pattern):
    out = tmp_path / "grid"
    expect(run(*argv, "--out", out), 2, pattern)
    assert not (out / "benchmark_config.json").exists()
