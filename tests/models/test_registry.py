"""The model registry, and the protocol battery run over every adapter that builds offline."""

import json
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from ravl.exceptions import InvalidParameterError, MissingDependencyError, ModelNotFoundError, RavlWarning
from ravl.models import MODELS, VisionLanguageModel, list_models, load_model, model_info, register_model

OPTIONAL = ("open_clip", "transformers", "torchvision")


def _battery_cases():
    """Every exact name whose backend is in the core, and every entry with a small test instance.

    Prefix entries (``open_clip:``, ``hf:``) need an architecture or a path, so they take part
    through the ``test_instance`` their registration supplies.
    """
    cases = [pytest.param(n, None, id=n) for n in list_models()
             if not n.endswith(":") and model_info(n).extra is None]
    cases += [pytest.param(n, model_info(n).test_instance, id=f"{n}test-instance") for n in list_models()
              if model_info(n).test_instance is not None]
    return cases


def test_list_models_has_builtin_and_prefixes():
    names = list_models()
    assert names[0] == "tiny" and all(isinstance(n, str) for n in names)
    assert {"tiny", "open_clip:", "hf:"} <= set(names)
    assert model_info("tiny").extra is None and model_info("tiny").description
    assert model_info("open_clip:RN50") is model_info("open_clip:")
    assert MODELS.describe()["tiny"] == model_info("tiny").description
    assert model_info("open_clip:").extra == "open-clip" and model_info("hf:").extra == "hf"


def test_duplicate_registration_needs_override():
    with pytest.raises(InvalidParameterError, match="already registered; pass override=True"):
        register_model("tiny")(lambda name, checkpoint=None: None)
    assert model_info("tiny").factory is not None


def test_unknown_name_suggests_close_matches():
    with pytest.raises(ModelNotFoundError) as err:
        load_model("tiyn")
    msg = str(err.value)
    assert "Unknown model 'tiyn'" in msg and "Did you mean 'tiny'" in msg and "open_clip:" in msg
    assert isinstance(err.value, KeyError)
    with pytest.raises(ModelNotFoundError, match="Registered: tiny"):
        load_model("completely-different")


@pytest.mark.parametrize(("name", "module", "extra"), [("open_clip:RN50", "open_clip", "open-clip"),
                                                      ("hf:/some/folder", "transformers", "hf")])
def test_missing_backend_gives_install_hint(monkeypatch, name, module, extra):
    # Hide the backend even where it is installed: None in sys.modules makes its import fail.
    monkeypatch.setitem(sys.modules, module, None)
    with pytest.raises(MissingDependencyError, match=rf"pip install 'ravl\[{extra}\]'"):
        load_model(name)


def test_register_a_new_backend():
    from ravl.models.tiny import build_tiny_clip

    @register_model("test-backend", description="a test entry")
    def _factory(name, checkpoint=None, **kwargs):
        return build_tiny_clip(name=name, **kwargs)

    try:
        m = load_model("test-backend", seed=2, device="cpu")
        assert m.name == "test-backend" and isinstance(m, VisionLanguageModel)
    finally:
        MODELS.unregister("test-backend")


@pytest.mark.parametrize(("name", "test_instance"), _battery_cases())
def test_protocol_battery(name, test_instance, tmp_path):
    """What every adapter must do, checked only through the protocol."""
    from ravl.models.checkpoint import save_checkpoint
    from ravl.models.regions import REGION_MODES, embed_images, embed_regions

    if test_instance is None:
        m = load_model(name, device="cpu")
        assert m.name == name
    else:
        try:
            m = test_instance()
        except MissingDependencyError as exc:  # the backend's extra is not installed here
            pytest.skip(str(exc))
        assert m.name.startswith(name)
    assert isinstance(m, VisionLanguageModel)
    assert isinstance(m.embed_dim, int) and m.embed_dim > 0
    h, w = m.image_size
    assert isinstance(m.module, torch.nn.Module) and m.device.type == "cpu"
    json.dumps(m.config())
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (hh, ww, 3), dtype=np.uint8)) for ww, hh in [(w, h), (3 * w, h)]]
    px = m.preprocess(images)
    assert px.shape == (2, 3, h, w) and px.dtype == torch.float32
    tokens = m.tokenize(["a photo of a seven", "ünïcødé ✓ " * 50])
    assert tokens.ndim == 2 and tokens.shape[0] == 2
    with torch.no_grad():
        assert m.encode_image(px).shape == (2, m.embed_dim)
        assert m.encode_text(tokens).shape == (2, m.embed_dim)
        assert m.logit_scale().ndim == 0 and float(m.logit_scale()) > 0
    img = embed_images(m, images, progress=False)
    boxes = [[[0, 0, w, h]], [[0, 0, 3 * w, h], [0, 0, w, h // 2]]]
    # The wide image's full box is cut by a centre crop: adapters that crop (map_boxes) must say so.
    crops = hasattr(m, "map_boxes") and m.map_boxes(np.array([[0, 0, 3 * w, h]], float), (3 * w, h))[1][0] != "inside"
    for mode in REGION_MODES:
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                reg = embed_regions(m, images, boxes=boxes, mode=mode, progress=False)
        except NotImplementedError:
            assert mode == "roi"
            continue
        assert reg.shape == (3, m.embed_dim)
        cut = [c for c in caught if issubclass(c.category, RavlWarning) and "centre crop" in str(c.message)]
        assert len(cut) == (1 if crops and mode != "crop" else 0), (mode, [str(c.message) for c in caught])
        if mode != "roi":  # a full-image box in masked / crop mode is the image itself
            assert np.allclose(reg[[0, 1]], img, atol=1e-4)
    out = save_checkpoint(m, tmp_path / "ckpt")
    again = load_model(None, checkpoint=out).to("cpu")
    with torch.no_grad():
        assert torch.equal(again.encode_image(px), m.encode_image(px))


def test_import_ravl_does_not_import_optional_backends():
    code = (
        "import sys, ravl\n"
        "m = ravl.load_model('tiny')\n"
        "import ravl.models.regions, ravl.models.checkpoint, ravl.models.tokenizer\n"
        "ravl.list_models()\n"
        f"print([n for n in {OPTIONAL!r} if n in sys.modules])\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "[]"
