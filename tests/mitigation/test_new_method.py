"""A mitigation method registered here, and nowhere else, is a first-class method.

It shows up in ``ravl mitigate --help`` (a --method choice and its own option group), runs through
``ravl mitigate`` with its own flag, is accepted by ``ravl benchmark mitigate --methods`` (and run
on a small grid), and passes the contract battery. No file outside this one names it.

Registered at import, as a user's plugin module would; unregistered when this module's tests end,
so other modules see the built-in registry only. (``test_contract.py`` is collected before this
file, so its registry-wide parametrisation holds the built-ins only.)
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import pytest

from ravl.cli import build_parser, main
from ravl.mitigation import (
    MITIGATION_METHODS,
    ConfigMixin,
    MitigationPlan,
    PromptObjective,
    register_mitigation_method,
)
from ravl.mitigation.checks import check_mitigation_method
from ravl.mitigation.methods.vl import vl_erm_per_sample
from ravl.training.loop import FinetuneConfig

NAME = "cooled-erm"


@dataclass(frozen=True)
class CooledConfig(ConfigMixin):
    """A temperature multiplier for VL-ERM's logits."""

    cooling: float = field(default=0.5, metadata={"help": "multiplier of the learned logit scale"})


class CooledObjective(PromptObjective):
    """VL-ERM with the logit scale multiplied by ``config.cooling``."""

    name = "cooled_erm"
    config_cls = CooledConfig

    def __init__(self, labels_by_index, config=None, *, class_names, templates=None, **kwargs):
        super().__init__(labels_by_index, config, kwargs, class_names=class_names, templates=templates)

    def __call__(self, model, batch):
        img = model.encode_image(batch["pixels"])
        labels = self._labels(batch, img.device)
        per = vl_erm_per_sample(img, self._class_embeddings(model), labels,
                                self.config.cooling * model.logit_scale())
        return {"loss": per.mean()}


@register_mitigation_method(NAME, config=CooledConfig, description="VL-ERM with a cooled logit scale")
def cooled_erm(ctx, config):
    ctx.require_labelling(NAME)
    return MitigationPlan(CooledObjective(ctx.labels, config, class_names=ctx.classes, templates=ctx.templates))


@pytest.fixture(scope="module", autouse=True)
def _unregister_afterwards():
    yield
    MITIGATION_METHODS.unregister(NAME)


def test_shows_up_in_mitigate_help(capsys):
    with pytest.raises(SystemExit):
        main(["mitigate", "--help"])
    out = capsys.readouterr().out
    assert NAME in out and "options of method 'cooled-erm'" in out
    assert "--cooled-erm-cooling FLOAT" in out and "multiplier of the learned logit scale (default: 0.5)" in out


@pytest.mark.slow
def test_runs_through_ravl_mitigate_with_its_own_option(mitigation_env, tmp_path, capsys):
    env = mitigation_env
    train_dir = env["setting"].train_dir
    code = main(["mitigate", "--checkpoint", str(env["ckpt"]), "--data", str(train_dir), "--discovery",
                 str(env["discovery"]), "--method", NAME, "--cooled-erm-cooling", "0.25", "--out",
                 str(tmp_path / "out"), "--epochs", "1", "--val-split", "none", "--quiet"])
    assert code == 0, capsys.readouterr().err
    cfg = json.loads((tmp_path / "out" / "config.json").read_text())
    assert cfg["mitigation"]["method"] == NAME and cfg["mitigation"]["method_config"] == {"cooling": 0.25}
    # its flag with another method is a usage error
    assert main(["mitigate", "--checkpoint", str(env["ckpt"]), "--data", str(train_dir), "--discovery",
                 str(env["discovery"]), "--method", "ravl", "--cooled-erm-cooling", "0.25", "--out",
                 str(tmp_path / "x")]) == 2
    assert "--cooled-erm-cooling is an option of method(s) cooled-erm" in capsys.readouterr().err


def test_passes_the_contract(mitigation_env, mitigation_labelling, tmp_path):
    env = mitigation_env
    res = check_mitigation_method(NAME, checkpoint=env["ckpt"], train=env["train"], discovery=env["discovery"],
                                  work_dir=tmp_path, config=FinetuneConfig(epochs=1, batch_size=16, val_split=None),
                                  method_config={"cooling": 0.25}, labelling=mitigation_labelling)
    assert res.method_config == {"cooling": 0.25}


@pytest.mark.slow
def test_accepted_and_run_by_the_mitigation_benchmark(tmp_path, capsys):
    args = build_parser().parse_args(["benchmark", "mitigate", "--methods", NAME, f"{NAME}-continue"])
    assert args.methods == [NAME, f"{NAME}-continue"]
    with pytest.raises(SystemExit):
        main(["benchmark", "mitigate", "--help"])
    assert NAME in capsys.readouterr().out
    argv = ["benchmark", "mitigate", "--out", str(tmp_path), "--features", "red_square", "--spurious-classes",
            "nine", "--methods", "standard", NAME, "--n-train", "600", "--n-eval", "200", "--epochs", "2",
            "--batch-size", "32", "--threads", "1", "--cooled-erm-cooling", "0.5", "--quiet"]
    assert main(argv) == 0, capsys.readouterr().err
    rows = [json.loads(x) for x in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert [r["method"] for r in rows] == ["standard", NAME]
    assert set(rows[1]["metrics"]) == {"Image Overall", "Image Worst-Group", "Region Overall", "Region Worst-Group"}
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert NAME in [e["method"] for e in summary["thresholds"][0]["methods"]]
