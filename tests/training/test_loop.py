import json

import pytest
import torch

from ravl.exceptions import CheckpointError, DatasetError
from ravl.training.loop import ContrastiveObjective, FinetuneConfig, finetune


@pytest.fixture(scope="module")
def train_ds(small_setting):
    from ravl.data.dataset import load_dataset

    ds = load_dataset(small_setting.train_dir, require_fields=("caption",))
    # a 300-image slice keeps these tests fast; keep the val rows for validation
    keep = [i for i, r in enumerate(ds.records) if r.split == "val"] + \
           [i for i, r in enumerate(ds.records) if r.split == "train"][:300]
    return ds.subset(indices=sorted(keep))


def _model():
    from ravl.models import load_model

    return load_model("tiny", seed=0)


def _weights(model):
    return {k: v.detach().clone() for k, v in model.module.state_dict().items()}


class _Interrupt(ContrastiveObjective):
    """Raises KeyboardInterrupt on the given call, like a user pressing Ctrl-C mid-epoch."""

    def __init__(self, at_call):
        self.calls = 0
        self.at_call = at_call

    def __call__(self, model, batch):
        self.calls += 1
        if self.calls == self.at_call:
            raise KeyboardInterrupt
        return super().__call__(model, batch)


CFG = FinetuneConfig(epochs=2, batch_size=64, checkpoint_interval_s=1e-9)


def test_finetune_learns_and_writes_checkpoint(train_ds, tmp_path):
    from ravl.models import load_model

    model = _model()
    before = _weights(model)
    res = finetune(model, train_ds, tmp_path, CFG, progress=False, init={"model": "tiny", "seed": 0})
    assert len(res.history) == 2 and res.resumed_from is None
    assert res.history[1]["train_loss"] < res.history[0]["train_loss"] + 0.5
    assert {"val_loss", "val_zero_shot_accuracy", "images_per_s"} <= set(res.history[0])
    assert any(not torch.equal(before[k], v) for k, v in model.module.state_dict().items())
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["init"] == {"model": "tiny", "seed": 0} and cfg["epochs_completed"] == 2
    reloaded = load_model("tiny", checkpoint=tmp_path)
    for k, v in reloaded.module.state_dict().items():
        torch.testing.assert_close(v, model.module.state_dict()[k])
    assert json.loads((tmp_path / "history.json").read_text())[1]["epoch"] == 2


def test_interrupted_run_resumes_to_identical_weights(train_ds, tmp_path):
    ref = _model()
    finetune(ref, train_ds, tmp_path / "ref", CFG, progress=False)

    steps_per_epoch = -(-sum(r.split == "train" for r in train_ds.records) // 64)
    for at in (2, steps_per_epoch + 2):  # mid first epoch, then mid second epoch
        out = tmp_path / f"run{at}"
        with pytest.raises(KeyboardInterrupt):
            finetune(_model(), train_ds, out, CFG, objective=_Interrupt(at), progress=False)
        assert (out / "training_state.pt").exists()
        model = _model()
        res = finetune(model, train_ds, out, CFG, progress=False)
        assert res.resumed_from is not None
        for k, v in ref.module.state_dict().items():
            torch.testing.assert_close(model.module.state_dict()[k], v, rtol=0, atol=0)


def test_load_record_is_the_default_init_and_then_points_at_the_checkpoint(train_ds, tmp_path):
    from ravl.models import load_model

    model = _model()
    assert model.load_record == {"model": "tiny", "checkpoint": None, "seed": 0}
    finetune(model, train_ds, tmp_path / "a", FinetuneConfig(epochs=1, batch_size=64), progress=False)
    cfg = json.loads((tmp_path / "a" / "config.json").read_text())
    assert cfg["init"] == {"model": "tiny", "checkpoint": None, "seed": 0}
    # the weights are now the checkpoint's, so a second fine-tuning records that as its start
    assert model.load_record == {"model": "tiny", "checkpoint": str((tmp_path / "a").resolve())}
    reloaded = load_model(None, tmp_path / "a")
    assert reloaded.load_record["checkpoint"] == str((tmp_path / "a").resolve())
    # resuming an interrupted run with the model loaded from that run's own folder keeps its start
    steps_per_epoch = -(-sum(r.split == "train" for r in train_ds.records) // 64)
    with pytest.raises(KeyboardInterrupt):
        finetune(_model(), train_ds, tmp_path / "c", CFG, objective=_Interrupt(steps_per_epoch + 2), progress=False)
    finetune(load_model(None, tmp_path / "c"), train_ds, tmp_path / "c", CFG, progress=False)
    assert json.loads((tmp_path / "c" / "config.json").read_text())["init"] == {"model": "tiny", "checkpoint": None,
                                                                               "seed": 0}
    # an explicit init wins
    finetune(reloaded, train_ds, tmp_path / "b", FinetuneConfig(epochs=1, batch_size=64), progress=False,
             init={"model": "tiny", "seed": 3})
    assert json.loads((tmp_path / "b" / "config.json").read_text())["init"] == {"model": "tiny", "seed": 3}


def test_finished_run_is_not_repeated(train_ds, tmp_path):
    finetune(_model(), train_ds, tmp_path, FinetuneConfig(epochs=1, batch_size=64), progress=False)
    obj = _Interrupt(1)  # would raise if any step ran
    res = finetune(_model(), train_ds, tmp_path, FinetuneConfig(epochs=1, batch_size=64), progress=False,
                   objective=obj)
    assert obj.calls == 0 and res.resumed_from == (1, 0)


def test_other_config_in_out_dir_is_refused(train_ds, tmp_path):
    finetune(_model(), train_ds, tmp_path, FinetuneConfig(epochs=1, batch_size=64), progress=False)
    with pytest.raises(CheckpointError, match="another configuration"):
        finetune(_model(), train_ds, tmp_path, FinetuneConfig(epochs=1, batch_size=32), progress=False)
    # --no-resume overwrites
    res = finetune(_model(), train_ds, tmp_path, FinetuneConfig(epochs=1, batch_size=32), progress=False,
                   resume=False)
    assert res.resumed_from is None


def test_a_setting_added_later_at_its_default_still_resumes(train_ds, tmp_path):
    """A run saved before a method gained a setting resumes when the setting is at its default."""
    cfg = FinetuneConfig(epochs=1, batch_size=64)
    old = {"method": "m", "method_config": {"lam": 1.0}}
    finetune(_model(), train_ds, tmp_path, cfg, progress=False, run_info=old)
    defaults = {"method_config": {"lam": 1.0, "new_knob": "off"}}
    obj = _Interrupt(1)  # would raise if any step ran: the finished run is returned as is
    res = finetune(_model(), train_ds, tmp_path, cfg, progress=False, objective=obj, run_info_defaults=defaults,
                   run_info={"method": "m", "method_config": {"lam": 1.0, "new_knob": "off"}})
    assert res.resumed_from == (1, 0)
    for changed in ({"lam": 1.0, "new_knob": "on"}, {"lam": 0.5, "new_knob": "off"}):   # not the same run
        with pytest.raises(CheckpointError, match="differs in: method_config"):
            finetune(_model(), train_ds, tmp_path, cfg, progress=False, objective=obj, run_info_defaults=defaults,
                     run_info={"method": "m", "method_config": changed})
    with pytest.raises(CheckpointError, match="differs in: method_config"):   # without the defaults: strict
        finetune(_model(), train_ds, tmp_path, cfg, progress=False, objective=obj,
                 run_info={"method": "m", "method_config": {"lam": 1.0, "new_knob": "off"}})


def test_missing_captions_and_empty_split_are_explained(train_ds, tmp_path):
    with pytest.raises(ValueError, match="'train_split' parameter of FinetuneConfig must be one of"):
        FinetuneConfig(train_split="nosuch")  # a misspelt split is refused before any work
    with pytest.raises(DatasetError, match="'test' split .* has 0 image"):
        finetune(_model(), train_ds.subset("train"), tmp_path, FinetuneConfig(train_split="test"), progress=False)


def test_config_validation():
    with pytest.raises(ValueError, match="'epochs' parameter of FinetuneConfig must be an int"):
        FinetuneConfig(epochs=0)
    assert FinetuneConfig.from_dict(FinetuneConfig(lr=0.1).to_dict()) == FinetuneConfig(lr=0.1)


def test_finished_run_keeps_no_optimiser_state_and_reruns_as_is(train_ds, tmp_path):
    import torch

    cfg = FinetuneConfig(epochs=1, batch_size=64, val_split=None)
    ref = _model()
    finetune(ref, train_ds, tmp_path, cfg, progress=False)
    state = torch.load(tmp_path / "training_state.pt", weights_only=False)
    assert state["finished"] and not {"model", "optimizer", "scheduler"} & set(state)
    again = _model()  # fresh weights: the rerun must give back the finished run's
    res = finetune(again, train_ds, tmp_path, cfg, progress=False)
    assert res.resumed_from == (1, 0) and len(res.history) == 1
    for k, v in ref.module.state_dict().items():
        assert torch.equal(again.module.state_dict()[k], v), k
