"""The CLI run in-process on small settings."""

import json

import pytest

from ravl.cli import build_parser, main


def test_help_lists_every_command(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for cmd in ("demo", "make-benchmark", "finetune", "evaluate", "discover", "mitigate", "benchmark", "validate", "models"):
        assert cmd in out


def test_models_lists_tiny(capsys):
    assert main(["models"]) == 0
    assert "tiny" in capsys.readouterr().out


def test_finetune_then_evaluate(small_setting, tmp_path, capsys):
    ckpt = tmp_path / "ckpt"
    assert main(["finetune", "--data", str(small_setting.train_dir), "--out", str(ckpt), "--epochs", "1",
                 "--batch-size", "64", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "checkpoint:" in out and (ckpt / "config.json").exists()
    # rerun resumes a finished run without training again
    assert main(["finetune", "--data", str(small_setting.train_dir), "--out", str(ckpt), "--epochs", "1",
                 "--batch-size", "64", "--quiet"]) == 0
    assert "resumed from epoch 2" in capsys.readouterr().out

    js = tmp_path / "metrics.json"
    assert main(["evaluate", "--checkpoint", str(ckpt), "--data", str(small_setting.eval_dir), "--split", "test",
                 "--json", str(js), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "spurious feature 'red_square'" in out and "worst group (image)" in out and "validity:" in out
    d = json.loads(js.read_text())
    ev = d["evaluation"]
    assert ev["split"] == "test" and ev["n_images"] == sum(
        1 for line in (small_setting.eval_dir / "metadata.jsonl").read_text().splitlines() if '"test"' in line)
    assert len(ev["image"]["groups"]) == 20 and ev["core_region"] is not None
    assert d["validity"]["spurious_class"] == "nine"


def test_evaluate_bad_input_is_a_clear_error(tmp_path, capsys):
    assert main(["evaluate", "--data", str(tmp_path / "nope")]) == 1
    err = capsys.readouterr().err
    assert "error:" in err and "nope" in err


def test_templates_file(small_setting, tmp_path, trained_tiny, capsys):
    _, ckpt = trained_tiny
    t = tmp_path / "templates.txt"
    t.write_text("# digits\nthe number is a {}\n")
    assert main(["evaluate", "--checkpoint", str(ckpt), "--data", str(small_setting.eval_dir), "--split", "val",
                 "--templates", str(t), "--no-regions", "--quiet"]) == 0
    t.write_text("no placeholder\n")
    assert main(["evaluate", "--checkpoint", str(ckpt), "--data", str(small_setting.eval_dir),
                 "--templates", str(t), "--quiet"]) == 1
    assert "placeholder" in capsys.readouterr().err


def test_parser_defaults_match_library():
    from ravl.cli._common import recipe_overrides
    from ravl.models import load_model
    from ravl.training.loop import FinetuneConfig

    # no recipe flag: the model's default recipe, which for the tiny CLIP is FinetuneConfig()'s
    args = build_parser().parse_args(["finetune", "--data", "d", "--out", "o"])
    assert recipe_overrides(args) == {}
    assert FinetuneConfig.for_model(load_model("tiny")) == FinetuneConfig()
    args = build_parser().parse_args(["finetune", "--data", "d", "--out", "o", "--lr", "1e-4", "--val-split", "none",
                                      "--grad-checkpointing"])
    assert recipe_overrides(args) == {"lr": 1e-4, "val_split": None, "grad_checkpointing": True}


def test_plugins_from_entry_points_are_loaded_before_the_parser(monkeypatch, tmp_path, capsys):
    import importlib.metadata
    import sys
    import types

    import ravl.cli as cli
    from ravl.data.features import FEATURES

    mod = types.ModuleType("fake_ravl_plugin")

    def load():
        from ravl.data.features import register_feature

        register_feature("plugin_square", lambda s: __import__("numpy").full((s, s, 3), 200, "uint8"))

    ep = types.SimpleNamespace(name="fake", value="fake_ravl_plugin", load=load)
    monkeypatch.setitem(sys.modules, "fake_ravl_plugin", mod)
    monkeypatch.setattr(importlib.metadata, "entry_points", lambda group: [ep] if group == cli.PLUGIN_GROUP else [])
    try:
        assert main(["make-benchmark", "--out", str(tmp_path / "s"), "--feature", "plugin_square", "--n-train",
                     "40", "--n-eval", "20", "--quiet"]) == 0
    finally:
        FEATURES.unregister("plugin_square")

    def broken():
        raise ImportError("No module named 'missing_dep'")

    monkeypatch.setattr(importlib.metadata, "entry_points",
                        lambda group: [types.SimpleNamespace(name="bad", value="bad_mod", load=broken)])
    assert main(["models"]) == 1
    err = capsys.readouterr().err
    assert "error: The ravl plugin 'bad' (bad_mod) failed to load: ImportError" in err


def test_verbose_shows_the_traceback_of_an_error(capsys):
    assert main(["make-benchmark", "--out", "x", "--feature", "rng"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: Unknown spurious feature 'rng'") and "Traceback" not in err
    assert main(["-v", "make-benchmark", "--out", "x", "--feature", "rng"]) == 2
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "error: Unknown spurious feature 'rng'" in err
