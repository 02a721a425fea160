"""Catalogue: `ravl finetune`, `ravl evaluate`, `ravl audit` and checkpoints."""

from __future__ import annotations

import json
import shutil
import signal
import time

import pytest
import torch

from ravl.data.dataset import load_dataset, write_metadata

from .conftest import expect, run, snapshot, spawn


def _ft(cat_env, out, *extra):
    return run("finetune", "--data", cat_env["train"], "--out", out, "--epochs", "1", "--batch-size", "64",
               "--quiet", *extra)


@pytest.mark.parametrize(("flag", "value", "pattern"), [
    ("--epochs", "0", r"'epochs'.*\[1, inf\)"),
    ("--lr", "nan", r"'lr'.*\(0, 1\]. Got nan"),
    ("--lr", "-0.1", r"'lr'.*Got -0.1"),
    ("--lr", "5", r"'lr'.*Got 5.0"),
    ("--batch-size", "1", r"'batch_size'.*\[2, inf\)"),
    ("--val-split", "vla", r"'val_split'.*Got 'vla'"),
    ("--precision", "fp8", r"--precision: invalid choice: 'fp8'"),
    ("--freeze", "both", r"--freeze: invalid choice: 'both'"),
    ("--workers", "-1", r"--workers: must be a whole number >= 0"),
    ("--warmup-fraction", "2", r"'warmup_fraction'.*Got 2.0"),
])
def test_finetune_bad_recipe_is_refused_before_any_work(cat_env, tmp_path, flag, value, pattern):
    expect(_ft(cat_env, tmp_path / "o", flag, value), 2, pattern)
    assert not (tmp_path / "o").exists()


def test_fp16_on_cpu_is_refused_before_any_work(cat_env, tmp_path):
    expect(_ft(cat_env, tmp_path / "o", "--precision", "fp16", "--device", "cpu"), 2,
           r"--precision fp16 needs a CUDA device .* use bf16 or fp32")
    assert not (tmp_path / "o").exists()


def test_recipe_flags_reach_the_run(cat_env, tmp_path):
    res = _ft(cat_env, tmp_path / "o", "--precision", "bf16", "--freeze", "text", "--grad-checkpointing",
              "--workers", "2", "--weight-decay", "0.1", "--warmup-fraction", "0.2")
    expect(res, 0)
    rec = json.loads((tmp_path / "o" / "config.json").read_text())["finetune"]
    assert {k: rec[k] for k in ("precision", "freeze", "grad_checkpointing", "weight_decay", "warmup_fraction")} \
        == {"precision": "bf16", "freeze": "text", "grad_checkpointing": True, "weight_decay": 0.1,
            "warmup_fraction": 0.2}


def test_bad_device(cat_env, tmp_path):
    expect(_ft(cat_env, tmp_path / "o", "--device", "gpu"), 2, r"--device 'gpu' is not a device")
    if not torch.cuda.is_available():
        expect(_ft(cat_env, tmp_path / "o", "--device", "cuda"), 2, r"CUDA, which is not available")
    assert not (tmp_path / "o").exists()


def test_out_that_is_a_file_and_unknown_model(cat_env, tmp_path):
    (tmp_path / "f").write_text("x")
    expect(_ft(cat_env, tmp_path / "f"), 2, r"--out: .* is a file")
    expect(_ft(cat_env, tmp_path / "o", "--model", "tinny"), 2, r"Unknown model 'tinny'", r"Did you mean 'tiny'")


def test_same_seed_same_checkpoint_bytes(cat_env, tmp_path):
    expect(_ft(cat_env, tmp_path / "a"), 0)
    expect(_ft(cat_env, tmp_path / "b"), 0)
    for name in ("model.safetensors", "config.json", "history.json"):
        a, b = (tmp_path / "a" / name).read_bytes(), (tmp_path / "b" / name).read_bytes()
        if name == "history.json":  # wall-clock seconds and images/s differ; the losses may not
            ha, hb = json.loads(a), json.loads(b)
            for h in ha + hb:
                h.pop("seconds"), h.pop("images_per_s")
            assert ha == hb
        else:
            assert a == b, name


def test_changed_training_data_under_resume_is_refused(cat_env, tmp_path):
    data = tmp_path / "train"
    shutil.copytree(cat_env["train"], data)
    out = tmp_path / "ckpt"
    expect(run("finetune", "--data", data, "--out", out, "--epochs", "1", "--batch-size", "64", "--quiet"), 0)
    before = snapshot(out)
    rows = [json.loads(x) for x in (data / "metadata.jsonl").read_text().splitlines()]
    for r in rows:
        r["caption"] = r["caption"].replace("the", "a")  # every caption edited, same count
    write_metadata(data, rows)
    res = run("finetune", "--data", data, "--out", out, "--epochs", "1", "--batch-size", "64", "--quiet")
    expect(res, 1, r"The training data changed since the run in .* started", r"--allow-data-change", r"--no-resume")
    assert snapshot(out) == before  # nothing was touched
    expect(run("finetune", "--data", data, "--out", out, "--epochs", "1", "--batch-size", "64", "--quiet",
               "--allow-data-change"), 0)


def test_two_runs_on_one_output_folder(cat_env, tmp_path):
    out = tmp_path / "ckpt"
    first = spawn("finetune", "--data", cat_env["train"], "--out", out, "--epochs", "30", "--batch-size", "32",
                  "--quiet")
    lock = tmp_path / ".ckpt.ravl-lock"
    deadline = time.monotonic() + 120
    while not (lock.exists() and lock.read_text()) and time.monotonic() < deadline:
        time.sleep(0.2)
    try:
        res = _ft(cat_env, out)
        expect(res, 1, r"is being written by another run: `finetune` \(pid \d+ on ", r"started ")
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    # the lock of a killed run is recovered by the next one, which resumes or restarts cleanly
    expect(run("finetune", "--data", cat_env["train"], "--out", out, "--epochs", "1", "--batch-size", "32",
               "--quiet", "--no-resume"), 0)


def test_truncated_checkpoint_weights(cat_env, tmp_path):
    ck = tmp_path / "ck"
    shutil.copytree(cat_env["ckpt"], ck)
    w = ck / "model.safetensors"
    w.write_bytes(w.read_bytes()[:1000])
    expect(run("evaluate", "--checkpoint", ck, "--data", cat_env["eval"]), 1, r"truncated", r"model.safetensors")
    expect(run("evaluate", "--checkpoint", tmp_path / "none", "--data", cat_env["eval"]), 1, r"does not exist")


# -- evaluate ---------------------------------------------------------------------------------

def _ev(cat_env, *extra):
    return run("evaluate", "--checkpoint", cat_env["ckpt"], "--data", cat_env["eval"], "--quiet", *extra)


def test_evaluate_misspellings_and_outputs(cat_env, tmp_path):
    expect(_ev(cat_env, "--split", "tset"), 2, r"--split: invalid choice: 'tset'")
    expect(_ev(cat_env, "--json", tmp_path), 2, r"--json: .* is a folder")
    expect(_ev(cat_env, "--spurious-feature", "red_sqare"), 2, r"'red_sqare' is not a region attribute",
           r"Did you mean 'red_square'")
    expect(_ev(cat_env, "--spurious-class", "nien"), 2, r"--spurious-class 'nien' is not a class",
           r"Did you mean 'nine'")


@pytest.mark.parametrize(("text", "pattern"), [
    ("a {} next to a {}\n", r"line 1: template 'a \{\} next to a \{\}' has 2 '\{\}' placeholders"),
    ("no placeholder\n", r"line 1: .* has no '\{\}' placeholder"),
    ("# only a comment\n", r"holds no template"),
])
def test_bad_template_files(cat_env, tmp_path, text, pattern):
    t = tmp_path / "t.txt"
    t.write_text(text)
    expect(_ev(cat_env, "--templates", t), 1, pattern)


def test_group_metrics_that_cannot_be_formed_say_why(cat_env, tmp_path):
    ds = load_dataset(cat_env["eval"])
    root = tmp_path / "partial"
    root.mkdir()
    rows = []
    for k, r in enumerate(ds.subset("test").records[:40]):
        shutil.copyfile(r.path, root / r.path.name)
        row = {"file_name": r.path.name, "label": r.label, "split": "test"}
        if k % 2 == 0:
            row["region_attributes"] = list(r.region_attributes)
        rows.append(row)
    write_metadata(root, rows)
    shutil.copyfile(cat_env["eval"] / "classes.txt", root / "classes.txt")
    res = run("evaluate", "--checkpoint", cat_env["ckpt"], "--data", root, "--quiet", "--no-regions")
    expect(res, 0, r"warning: No group metrics: only 20 of the 40 images .* have region_attributes",
           r"--groups-from")
    # two attributes that could both be the feature
    for r in rows:
        r["region_attributes"] = ["ring" if k == 0 else a for k, a in
                                  enumerate(r.get("region_attributes") or ["red_square", "empty", "empty", "empty"])]
    write_metadata(root, rows)
    res = run("evaluate", "--checkpoint", cat_env["ckpt"], "--data", root, "--quiet", "--no-regions")
    expect(res, 0, r"warning: No group metrics: several region attributes could be the spurious feature "
                   r"\('red_square', 'ring'\)", r"--spurious-feature")


def test_evaluate_groups_from_a_missing_discovery(cat_env, tmp_path):
    expect(_ev(cat_env, "--groups-from", tmp_path / "nope.json"), 1, r"nope.json does not exist")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL])
def test_interrupted_finetune_resumes_to_the_same_weights(cat_env, tmp_path, sig):
    """Ctrl-C (exit 130, a message saying how to resume) or SIGKILL after the first epoch: the rerun
    continues and ends with the weights of an uninterrupted run."""
    args = ("--data", cat_env["train"], "--epochs", "3", "--batch-size", "64", "--quiet")
    expect(run("finetune", *args, "--out", tmp_path / "ref"), 0)
    out = tmp_path / "run"
    proc = spawn("finetune", *args, "--out", out)
    deadline = time.monotonic() + 300
    while not (out / "history.json").exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(sig)
    proc.wait()
    if sig == signal.SIGINT and proc.returncode != 0:  # stopped mid-run (not already finished)
        assert proc.returncode == 130
        assert "interrupted: finished results are saved; rerun the same command to resume" in proc.stderr.read()
    res = run("finetune", *args, "--out", out)
    expect(res, 0, r"resumed from epoch")
    assert (out / "model.safetensors").read_bytes() == (tmp_path / "ref" / "model.safetensors").read_bytes()


def test_out_of_memory_is_one_error_line(cat_env, tmp_path, monkeypatch, capsys):
    from ravl.cli import finetune as finetune_cli
    from ravl.cli import main

    def oom(args):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 79.3 GiB total)")

    monkeypatch.setattr(finetune_cli, "run", oom)
    assert main(["finetune", "--data", str(cat_env["train"]), "--out", str(tmp_path / "o"), "--quiet"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: out of GPU memory (CUDA out of memory. Tried to allocate")
    assert "--batch-size" in err[0] and "rerun the same command to resume" in err[0]


@pytest.mark.parametrize(("extra", "pattern"), [
    (("--model-option", "roi_layers"), r"--model-option 'roi_layers' must be KEY=VALUE"),
    (("--pretrained", "openai"), r"Unknown pretrained weights 'openai' for model 'tiny'; choose one of \['synthetic'\]"),
    (("--model", "hf:nowhere", "--pretrained", "openai"), r"--pretrained is for open_clip models .* got --model hf:"),
])
def test_model_loader_option_mistakes(cat_env, tmp_path, extra, pattern):
    expect(_ft(cat_env, tmp_path / "o", *extra), 2, pattern)
    assert not (tmp_path / "o").exists()
