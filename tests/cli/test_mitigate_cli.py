"""``ravl mitigate`` run in-process on a tiny setting."""

import json
import warnings

import pytest

from ravl.cli import main
from ravl.exceptions import RavlWarning


def _audited_setting(hand_discovery, root, **setting_kwargs):
    """A synthetic setting, a 1-epoch audited checkpoint (resume state saved every step), a discovery."""
    from ravl.data.dataset import load_dataset
    from ravl.data.synthetic import make_spurious_benchmark
    from ravl.models import load_model
    from ravl.training.loop import FinetuneConfig, finetune

    with warnings.catch_warnings():  # tiny settings cannot reach V = 0.95 exactly; fine here
        warnings.simplefilter("ignore", RavlWarning)
        s = make_spurious_benchmark(root / "setting", progress=False, **setting_kwargs)
    ckpt = root / "audited"
    finetune(load_model("tiny", seed=0), load_dataset(s.train_dir), ckpt,
             FinetuneConfig(epochs=1, batch_size=16, val_split=None, checkpoint_interval_s=1e-9), progress=False,
             init={"model": "tiny", "seed": 0, "checkpoint": None})
    disc = root / "discovery.json"
    hand_discovery(s.eval_dir).to_json(disc)
    return s, ckpt, disc


@pytest.fixture(scope="module")
def tiny(hand_discovery, tmp_path_factory):
    return _audited_setting(hand_discovery, tmp_path_factory.mktemp("cli_mitigate"), n_train=48, n_eval=40,
                            val_fraction=0.0, random_state=0)


def _args(s, ckpt, disc, out, *extra):
    return ["mitigate", "--checkpoint", str(ckpt), "--data", str(s.train_dir), "--discovery", str(disc),
            "--out", str(out), "--quiet", *extra]


def test_mitigate_prints_before_after_table_and_resumes(tiny, tmp_path, capsys, monkeypatch):
    from ravl.mitigation import RegionAwareObjective

    s, ckpt, disc = tiny
    out = tmp_path / "ravl"
    original = RegionAwareObjective.__call__
    calls = {"n": 0}

    def interrupting(self, model, batch):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return original(self, model, batch)

    monkeypatch.setattr(RegionAwareObjective, "__call__", interrupting)
    assert main(_args(s, ckpt, disc, out, "--lam", "0.5")) == 130  # Ctrl-C mid-epoch
    assert "rerun the same command" in capsys.readouterr().err
    monkeypatch.setattr(RegionAwareObjective, "__call__", original)
    capsys.readouterr()
    assert main(_args(s, ckpt, disc, out, "--lam", "0.5")) == 0  # rerun continues
    text = capsys.readouterr().out
    assert "resumed from epoch 1, step 1" in text
    assert "labelled" in text and "precision 1.000" in text
    for metric in ("Image Overall", "Image Worst-Group", "Region Overall", "Region Worst-Group"):
        assert metric in text
    assert "before" in text and "after" in text
    ev = json.loads((out / "evaluation.json").read_text())
    assert ev["split"] == "test" and ev["eval_data"] == str(s.eval_dir.resolve())
    assert set(ev["after"]["metrics"]) == {"Image Overall", "Image Worst-Group", "Region Overall",
                                           "Region Worst-Group"}
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["mitigation"]["method"] == "ravl" and cfg["mitigation"]["method_config"]["lam"] == 0.5
    assert cfg["mitigation"]["discovery"] == str(disc.resolve())
    assert cfg["finetune"]["epochs"] == 1 and cfg["finetune"]["batch_size"] == 16  # the audited run's recipe


def test_mitigate_baseline_without_eval_and_errors(tiny, tmp_path, capsys):
    s, ckpt, disc = tiny
    out = tmp_path / "gdro"
    assert main(_args(s, ckpt, disc, out, "--method", "vl-gdro", "--start", "checkpoint",
                      "--eval-data", str(s.eval_dir), "--features", "all")) == 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["mitigation"]["start"] == "checkpoint" and cfg["objective"] == "vl_gdro"
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main(_args(s, ckpt, disc, out, "--method", "nope"))
    assert main(["mitigate", "--data", str(s.train_dir), "--discovery", str(disc), "--out", str(out)]) == 2
    assert "error: --checkpoint is required" in capsys.readouterr().err
    # a feature rank discovery does not have is a clear error
    assert main(_args(s, ckpt, disc, tmp_path / "x", "--features", "3")) == 2
    assert "rank 3" in capsys.readouterr().err


@pytest.fixture(scope="module")
def longer(hand_discovery, tmp_path_factory):
    """380 training images and an audited checkpoint whose recipe saves the resume state every step."""
    return _audited_setting(hand_discovery, tmp_path_factory.mktemp("cli_mitigate_kill"), n_train=400, n_eval=80,
                            random_state=1)


@pytest.mark.slow
def test_killed_mitigate_resumes_to_the_same_metrics(longer, tmp_path, capsys):
    """SIGKILL mid-epoch (no clean-up at all), rerun: same weights and metrics as an uninterrupted run."""
    import os
    import signal
    import subprocess
    import sys
    import time

    import torch

    from ravl.models import load_model

    s, ckpt, disc = longer
    args = lambda out: _args(s, ckpt, disc, out, "--epochs", "2", "--region-warmup-epochs", "0",  # noqa: E731
                             "--eval-data", str(s.eval_dir))
    assert main(args(tmp_path / "ref")) == 0
    capsys.readouterr()

    out = tmp_path / "run"
    code = "import sys, torch; torch.set_num_threads(2); from ravl.cli import main; sys.exit(main(sys.argv[1:]))"
    env = {**os.environ, "RAVL_PROGRESS": "0", "OMP_NUM_THREADS": "2"}
    proc = subprocess.Popen([sys.executable, "-c", code, *args(out)], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    state_file = out / "training_state.pt"
    seen = None
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if state_file.exists():
                try:
                    st = torch.load(state_file, map_location="cpu", weights_only=False)
                except Exception:  # noqa: BLE001 - caught between os.replace calls; try again
                    st = None
                if st is not None and st["epoch"] == 0 and st["step_in_epoch"] >= 2:
                    proc.send_signal(signal.SIGKILL)
                    seen = (st["epoch"], st["step_in_epoch"])
                    break
            time.sleep(0.01)
    finally:
        if proc.poll() is None and seen is None:
            proc.kill()
        proc.wait()
    assert seen is not None, "the run finished (or failed) before it could be killed mid-epoch"
    assert proc.returncode == -signal.SIGKILL
    killed = torch.load(state_file, map_location="cpu", weights_only=False)
    assert killed["epoch"] == 0 and not (out / "evaluation.json").exists()  # killed inside the first epoch

    assert main(args(out)) == 0
    text = capsys.readouterr().out
    assert f"resumed from epoch 1, step {killed['step_in_epoch']}" in text
    ref = json.loads((tmp_path / "ref" / "evaluation.json").read_text())
    got = json.loads((out / "evaluation.json").read_text())
    assert got["after"]["metrics"] == ref["after"]["metrics"]
    assert got["after"]["result"]["image"] == ref["after"]["result"]["image"]
    a, b = load_model("tiny", checkpoint=out).module.state_dict(), load_model("tiny", checkpoint=tmp_path / "ref")
    for k, v in b.module.state_dict().items():
        torch.testing.assert_close(a[k], v, rtol=0, atol=0)


def test_mitigate_init_from_given_weights(tiny, tmp_path, capsys):
    from ravl.models import load_model, save_checkpoint

    s, ckpt, disc = tiny
    start = save_checkpoint(load_model("tiny", seed=3), tmp_path / "pretrained")
    out = tmp_path / "erm"
    assert main(_args(s, ckpt, disc, out, "--method", "vl-erm", "--init", str(start))) == 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["init"] == {"model": "tiny", "checkpoint": str(start.resolve())}
    assert main(_args(s, ckpt, disc, tmp_path / "x", "--init", str(start), "--init-seed", "1")) == 2
    assert "not both" in capsys.readouterr().err
