"""ravl checkpoints: atomic save, exact round trip, clear errors for broken folders."""

import json
import os

import pytest
import torch

from ravl.exceptions import CheckpointError, ModelNotFoundError
from ravl.models import load_checkpoint, load_model
from ravl.models.checkpoint import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    is_checkpoint,
    read_checkpoint_config,
    save_checkpoint,
)
from ravl.models.tiny import TinyCLIPConfig, build_tiny_clip


def _outputs(model):
    g = torch.Generator().manual_seed(0)
    px = torch.randn(2, 3, *model.image_size, generator=g)
    with torch.no_grad():
        return (model.encode_image(px), model.encode_text(model.tokenize(["a seven", "ünïcode 🙂"])),
                model.encode_roi(px, torch.tensor([[1.0, 0.1, 0.2, 0.6, 0.9]])), model.logit_scale())


def _trained(seed=0, **cfg):
    # Weights that differ from any fresh initialisation, so the round trip proves loading.
    m = build_tiny_clip(TinyCLIPConfig(**cfg), seed=seed)
    with torch.no_grad():
        for k, p in enumerate(m.module.parameters()):
            p.add_(0.01 * (k + 1))
    return m


@pytest.fixture
def saved(tmp_path):
    m = _trained()
    out = save_checkpoint(m, tmp_path / "ckpt", extra={"epochs_completed": 3, "init": {"seed": 0}})
    return m, out


def test_round_trip_gives_identical_outputs(saved):
    m, out = saved
    assert sorted(os.listdir(out)) == [CONFIG_FILE, WEIGHTS_FILE]  # no temp files left
    for loaded in (load_model("tiny", checkpoint=out), load_model(None, checkpoint=out), load_checkpoint(out),
                   load_model("tiny", checkpoint=out / CONFIG_FILE)):
        assert loaded.name == "tiny"
        sd, ref = loaded.module.state_dict(), m.module.state_dict()
        assert sd.keys() == ref.keys() and all(torch.equal(sd[k], ref[k]) for k in sd)
        for a, b in zip(_outputs(loaded), _outputs(m)):
            assert torch.equal(a, b)


def test_config_json_contents(saved):
    import ravl

    m, out = saved
    cfg = read_checkpoint_config(out)
    assert cfg["model"] == "tiny" and cfg["ravl_version"] == ravl.__version__
    assert cfg["model_config"] == m.config()
    assert cfg["epochs_completed"] == 3 and cfg["init"] == {"seed": 0}
    assert cfg["weights"]["file"] == WEIGHTS_FILE and len(cfg["weights"]["sha256"]) == 64
    assert is_checkpoint(out) and not is_checkpoint(out.parent)


def test_non_default_architecture_round_trips(tmp_path):
    m = _trained(seed=2, conv_widths=(8, 16, 16), conv_strides=(2, 2, 1), text_layers=1,
                 embed_dim=32, roi_samples=4)
    out = save_checkpoint(m, tmp_path / "c")
    loaded = load_checkpoint(out)
    assert loaded.module.config == m.module.config and loaded.embed_dim == 32
    for a, b in zip(_outputs(loaded), _outputs(m)):
        assert torch.equal(a, b)
    # options that agree with the checkpoint are accepted, others are refused
    load_model("tiny", checkpoint=out, embed_dim=32)
    with pytest.raises(ValueError, match="conflicts with the checkpoint"):
        load_model("tiny", checkpoint=out, embed_dim=64)
    with pytest.raises(ValueError, match="Unknown option"):
        load_model("tiny", checkpoint=out, embed_dimm=32)


def test_overwrite_replaces_checkpoint(saved):
    m, out = saved
    m2 = _trained(seed=5)
    save_checkpoint(m2, out)
    assert sorted(os.listdir(out)) == [CONFIG_FILE, WEIGHTS_FILE]
    assert "epochs_completed" not in read_checkpoint_config(out)
    assert torch.equal(_outputs(load_checkpoint(out))[0], _outputs(m2)[0])


def test_extra_may_not_shadow_reserved_keys(tmp_path):
    with pytest.raises(ValueError, match="reserved"):
        save_checkpoint(_trained(), tmp_path, extra={"model": "x"})
    with pytest.raises(ValueError, match="JSON"):
        save_checkpoint(_trained(), tmp_path, extra={"x": object()})
    assert not (tmp_path / CONFIG_FILE).exists()


def test_missing_folder_and_files(tmp_path, saved):
    with pytest.raises(CheckpointError, match="does not exist") as err:
        load_model("tiny", checkpoint=tmp_path / "nope")
    assert isinstance(err.value, OSError)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CheckpointError, match="neither"):
        load_checkpoint(empty)
    _, out = saved
    (out / CONFIG_FILE).unlink()
    with pytest.raises(CheckpointError, match="save did not finish"):
        load_model("tiny", checkpoint=out)
    with pytest.raises(ValueError, match="needs a model name"):
        load_model(None)
    f = tmp_path / "weights.bin"
    f.write_bytes(b"x")
    with pytest.raises(CheckpointError, match="is a file"):
        load_model("tiny", checkpoint=f)


def test_weights_missing(saved):
    _, out = saved
    (out / WEIGHTS_FILE).unlink()
    with pytest.raises(CheckpointError, match=f"no {WEIGHTS_FILE}"):
        load_checkpoint(out)


def test_truncated_and_corrupt_weights(saved):
    _, out = saved
    w = out / WEIGHTS_FILE
    data = w.read_bytes()
    w.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        load_checkpoint(out)
    flipped = bytearray(data)
    flipped[-10] ^= 0xFF
    w.write_bytes(bytes(flipped))
    with pytest.raises(CheckpointError, match="SHA-256"):
        load_checkpoint(out)
    # without the recorded hash, an unreadable file is still reported clearly
    cfg = json.loads((out / CONFIG_FILE).read_text())
    del cfg["weights"]
    (out / CONFIG_FILE).write_text(json.dumps(cfg))
    w.write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(out)


def test_corrupt_config(saved):
    _, out = saved
    (out / CONFIG_FILE).write_text("{not json")
    with pytest.raises(CheckpointError, match="Cannot read"):
        load_checkpoint(out)
    (out / CONFIG_FILE).write_text(json.dumps({"weights": {}}))
    with pytest.raises(CheckpointError, match="no \"model\" name"):
        load_checkpoint(out)


def _edit_config(out, **changes):
    cfg = json.loads((out / CONFIG_FILE).read_text())
    for k, v in changes.items():
        if v is None:
            cfg.pop(k, None)
        else:
            cfg[k] = v
    (out / CONFIG_FILE).write_text(json.dumps(cfg))
    return cfg


def test_model_name_mismatch(saved):
    _, out = saved
    _edit_config(out, model="open_clip:RN50")
    with pytest.raises(CheckpointError, match=r"model 'open_clip:RN50', not 'tiny'.*load_model\(None"):
        load_model("tiny", checkpoint=out)
    _edit_config(out, model="tinyy")
    with pytest.raises(ModelNotFoundError, match="tiny"):
        load_checkpoint(out)


def test_shape_mismatch_and_bad_model_config(saved):
    m, out = saved
    cfg = _edit_config(out, model_config={**m.config(), "embed_dim": 64})
    with pytest.raises(CheckpointError, match=r"shape mismatches.*visual_proj.weight: file \(128, 96\) vs model \(64, 96\)"):
        load_model("tiny", checkpoint=out)
    _edit_config(out, model_config={**cfg["model_config"], "embed_dim": 128, "text_layers": 1})
    with pytest.raises(CheckpointError, match="unexpected tensors"):
        load_model("tiny", checkpoint=out)
    _edit_config(out, model_config={**m.config(), "colour": "red"})
    with pytest.raises(CheckpointError, match="invalid 'model_config'.*colour"):
        load_model("tiny", checkpoint=out)


def test_interrupted_save_is_detected(saved, monkeypatch):
    m, out = saved
    real_replace = os.replace

    def crash_on_config(src, dst):
        if str(dst).endswith(CONFIG_FILE):
            raise KeyboardInterrupt
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", crash_on_config)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(_trained(seed=9), out)
    monkeypatch.setattr(os, "replace", real_replace)
    assert sorted(os.listdir(out)) == [CONFIG_FILE, WEIGHTS_FILE]  # temp files cleaned up
    # new weights next to the old config: refused rather than silently mixed
    with pytest.raises(CheckpointError, match="another save"):
        load_checkpoint(out)
    # a first save interrupted the same way leaves no config.json: "incomplete"
    monkeypatch.setattr(os, "replace", crash_on_config)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(m, out.parent / "fresh")
    monkeypatch.setattr(os, "replace", real_replace)
    with pytest.raises(CheckpointError, match="not a complete"):
        load_checkpoint(out.parent / "fresh")
