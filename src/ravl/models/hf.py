"""Hugging Face CLIP (and SigLIP) models behind ravl's adapter protocol: ``load_model("hf:DIR")``.

``DIR`` is a folder written by ``save_pretrained``: ``config.json`` of a ``CLIPModel`` or
``SiglipModel``, its weights, the tokenizer files and ``preprocessor_config.json``. Nothing is
downloaded (``local_files_only``).

* ``load_model("hf:DIR")``: the folder's own weights.
* ``load_model("hf:DIR", checkpoint=CKPT)``: a ravl checkpoint folder (architecture and weights
  from ``CKPT``; tokenizer and image processor from ``DIR``, which the checkpoint's model name
  records) or a state-dict file with the model's keys.

**Preprocessing** follows ``preprocessor_config.json`` with PIL + NumPy + torch
(:class:`~ravl.models.geometry.ResizeCropGeometry`): convert to RGB, resize (``shortest_edge``
keeping the aspect ratio, or ``height``/``width``), centre crop (``crop_size``, Hugging Face's
floor offsets), rescale, normalise. It equals the PIL image processor to float rounding; the
torchvision ("fast") processor of transformers 5 resizes with its own antialiasing and differs
by a few grey levels. Boxes are mapped through the same geometry (:meth:`HFCLIPAdapter.map_boxes`).

**Region embeddings** (``encode_roi``, one pass per image, see :mod:`ravl.models.pooling`):
CLIP ViTs run a region class token through the last ``roi_layers`` blocks (default: every
block; see :mod:`ravl.models.openclip` for the measurement behind it) or use
``roi_pool="patch-mean"``;
SigLIP, which has no class token, runs its attention-pooling head with the probe attending only
to the box's patches (area-weighted, boxes grown to at least one patch). A full-image box gives
the image embedding (to float rounding) in every case.

SigLIP fits the protocol with one caveat: it was trained with a sigmoid loss and a learned
``logit_bias``; ravl's fine-tuning and zero-shot scoring use ``logit_scale`` with softmax and
ignore the bias (ranking within an image is unaffected).

Export: :func:`export_hf` writes a ``save_pretrained`` folder (weights, tokenizer, image
processor config) that ``CLIPModel.from_pretrained`` / ``SiglipModel.from_pretrained`` load.
"""

from __future__ import annotations

import atexit
import copy
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ravl.exceptions import CheckpointError, InvalidParameterError
from ravl.models.base import load_checkpoint
from ravl.models.checkpoint import CONFIG_FILE, read_checkpoint
from ravl.models.geometry import ResizeCropGeometry
from ravl.models.pooling import (
    ViTBlock,
    box_patch_weights,
    check_roi_layers,
    vit_region_tokens,
    weighted_patch_mean,
)
from ravl.models.pretrained import PretrainedCLIPMixin
from ravl.models.weights import read_state_dict, state_mismatches
from ravl.utils.optional import require
from ravl.utils.progress import progress_enabled
from ravl.utils.validation import check_choice

__all__ = ["PREFIX", "ROI_POOLS", "HFCLIPAdapter", "load_hf", "export_hf", "geometry_from_processor",
           "small_test_model", "write_byte_bpe_tokenizer"]

logger = logging.getLogger(__name__)

#: Registry prefix of Hugging Face models.
PREFIX = "hf:"
#: How a CLIP ViT pools a region in ``encode_roi``.
ROI_POOLS: tuple[str, ...] = ("cls", "patch-mean")
PROCESSOR_FILE = "preprocessor_config.json"
_MODEL_TYPES = {"clip": "CLIPModel", "siglip": "SiglipModel"}
#: Tokenizer files, any one group of which must be present, per model type.
TOKENIZER_FILES: dict[str, tuple[tuple[str, ...], ...]] = {
    "clip": (("tokenizer.json",), ("vocab.json", "merges.txt")),
    "siglip": (("tokenizer.json",), ("spiece.model",)),
}
_RESAMPLE = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}


def _transformers(purpose: str):
    transformers = require("transformers", purpose=purpose)
    if not progress_enabled():  # RAVL_PROGRESS=0 / --quiet: transformers' own bars off too
        transformers.utils.logging.disable_progress_bar()
    return transformers


# ---------------------------------------------------------------------------------------------
# Preprocessing
# ---------------------------------------------------------------------------------------------

def _size_dict(value: Any) -> dict[str, int]:
    """A Hugging Face size (dict, SizeDict or int) as a plain dict of the keys that are set."""
    if value is None:
        return {}
    if isinstance(value, int):
        return {"height": value, "width": value}
    if isinstance(value, dict):
        items = value.items()
    else:
        items = ((k, getattr(value, k, None)) for k in ("height", "width", "shortest_edge", "longest_edge",
                                                      "max_height", "max_width"))
    return {k: int(v) for k, v in items if v is not None}


def geometry_from_processor(proc: Any, *, image_size: int, where: str = "preprocessor_config.json"
                            ) -> ResizeCropGeometry:
    """The :class:`ResizeCropGeometry` of a Hugging Face image processor (object or config dict).

    Args:
        proc: The processor (``AutoImageProcessor.from_pretrained(DIR)``) or its config dict.
        image_size: The vision tower's input side (``vision_config.image_size``).
        where: File named in errors.

    Raises:
        CheckpointError: For options ravl does not reproduce (padding, ``longest_edge``, a
            rescale factor other than 1/255) or an output size different from ``image_size``.
    """
    def get(key: str, default: Any = None) -> Any:
        return proc.get(key, default) if isinstance(proc, dict) else getattr(proc, key, default)

    problems = []
    if get("do_pad"):
        problems.append("do_pad=true")
    if get("do_rescale", True) and abs(float(get("rescale_factor", 1 / 255)) - 1 / 255) > 1e-9:
        problems.append(f"rescale_factor={get('rescale_factor')}")
    do_resize, do_crop = bool(get("do_resize", True)), bool(get("do_center_crop", False))
    raw_size = get("size")
    # A bare int in an old config means the shortest edge when a centre crop follows (CLIP), else a square.
    size = {"shortest_edge": raw_size} if isinstance(raw_size, int) and do_crop else _size_dict(raw_size)
    crop = _size_dict(get("crop_size"))
    if do_resize and not ({"shortest_edge"} == set(size) or {"height", "width"} == set(size)):
        problems.append(f"size={size} (ravl supports {{shortest_edge}} or {{height, width}})")
    if do_crop and {"height", "width"} != set(crop):
        problems.append(f"crop_size={crop}")
    resample = get("resample", 3)
    resample = int(getattr(resample, "value", resample))
    if resample not in _RESAMPLE:
        problems.append(f"resample={resample}")
    if problems:
        raise CheckpointError(f"{where}: ravl cannot reproduce this image processor ({', '.join(problems)}). Use a "
                              "processor that resizes, centre-crops, rescales by 1/255 and normalises.")
    if do_crop:
        out = (crop["height"], crop["width"])
    elif do_resize and "height" in size:
        out = (size["height"], size["width"])
    else:
        out = (image_size, image_size)
    if out != (image_size, image_size):
        raise CheckpointError(f"{where}: the processor produces {out[1]}x{out[0]} images but the vision tower takes "
                              f"{image_size}x{image_size}; fix crop_size/size in {where}.")
    if not do_resize:
        resize, target = "none", None
    elif "shortest_edge" in size:
        resize, target = "shortest", (size["shortest_edge"], size["shortest_edge"])
    else:
        resize, target = "squash", (size["height"], size["width"])
    mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    if get("do_normalize", True):
        mean, std = get("image_mean"), get("image_std")
        mean = (float(mean),) * 3 if isinstance(mean, (int, float)) else tuple(float(v) for v in mean)
        std = (float(std),) * 3 if isinstance(std, (int, float)) else tuple(float(v) for v in std)
    return ResizeCropGeometry(size=out, resize=resize, resize_target=target, interpolation=_RESAMPLE[resample],
                              mean=mean, std=std, center_crop=do_crop or resize == "none", crop_offset="floor",
                              convert_first=bool(get("do_convert_rgb", True)))


# ---------------------------------------------------------------------------------------------
# The adapter
# ---------------------------------------------------------------------------------------------

def _features(out: Any) -> torch.Tensor:
    """``get_*_features`` returns a tensor (transformers 4) or an output with ``pooler_output`` (5)."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output


class HFCLIPAdapter(PretrainedCLIPMixin):
    """:class:`~ravl.models.base.VisionLanguageModel` adapter around a Hugging Face ``CLIPModel`` / ``SiglipModel``.

    Build it with ``ravl.load_model("hf:DIR")`` (see :func:`load_hf`).

    Args:
        module: The model.
        folder: The ``save_pretrained`` folder the tokenizer and processor come from.
        tokenizer: The folder's tokenizer.
        geometry: The preprocessing (:func:`geometry_from_processor`).
        roi_layers: CLIP only: final blocks in which a region's class token attends to its box
            (``None`` or ``"all"``: every block, the default).
        roi_pool: CLIP only: ``"cls"`` or ``"patch-mean"``.
    """

    def __init__(self, module: torch.nn.Module, folder: Path, *, tokenizer: Any, geometry: ResizeCropGeometry,
                 roi_layers: int | str | None = None, roi_pool: str = "cls"):
        self.folder = Path(folder).resolve()
        self.name = PREFIX + str(self.folder)
        self.module = module
        self.model_type = str(module.config.model_type)
        self.tokenizer = tokenizer
        self.geometry = geometry
        self.image_size = tuple(geometry.size)
        self.roi_pool = check_choice(roi_pool, "roi_pool", "HFCLIPAdapter", ROI_POOLS)
        self.roi_layers = check_roi_layers(roi_layers, "HFCLIPAdapter")
        if self.model_type == "siglip":
            if roi_pool != "cls":
                raise InvalidParameterError("roi_pool='patch-mean' is for class-token ViTs; SigLIP pools regions with "
                                            "its attention-pooling head.")
            self.embed_dim = int(module.config.vision_config.hidden_size)
            self.image_projection_prefixes: tuple[str, ...] = ("vision_model.head.",)
        else:
            self.embed_dim = int(module.visual_projection.out_features)
            self.image_projection_prefixes = ("visual_projection.",)
        self.context_length = int(module.config.text_config.max_position_embeddings)

    IMAGE_CHILDREN = ("vision_model", "visual_projection")

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """transformers' gradient checkpointing (less memory, more time; active in training mode)."""
        # transformers 5 renamed these activation_checkpointing_*; 4.x has only gradient_checkpointing_*.
        what = "enable" if enable else "disable"
        fn = getattr(self.module, f"activation_checkpointing_{what}", None) or getattr(
            self.module, f"gradient_checkpointing_{what}")
        fn()

    def export(self, out: str | os.PathLike) -> dict[str, Any]:
        """A ``save_pretrained`` folder (:func:`export_hf`), with how to load it."""
        path = export_hf(self, out)
        cls = "SiglipModel" if self.model_type == "siglip" else "CLIPModel"
        return {"path": path, "how_to_load": (f"transformers.{cls}.from_pretrained({str(path)!r})",
                                              f"transformers.AutoProcessor.from_pretrained({str(path)!r})")}

    def __repr__(self) -> str:
        n = sum(p.numel() for p in self.module.parameters())
        return f"HFCLIPAdapter(name={self.name!r}, type={self.model_type}, params={n:,}, device={self.device})"

    # -- protocol --------------------------------------------------------------------------------
    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        """The folder's tokenizer, padded to the context length: ``[N, T]`` int64 (CPU)."""
        texts = self._texts(texts)
        if not texts:
            return torch.zeros(0, self.context_length, dtype=torch.long)
        enc = self.tokenizer(texts, padding="max_length", max_length=self.context_length, truncation=True,
                             return_tensors="pt")
        return enc["input_ids"].long()

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        """Image embeddings ``[N, D]`` (not normalised)."""
        return _features(self.module.get_image_features(pixel_values=pixels))

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        """Text embeddings ``[N, D]`` (not normalised)."""
        return _features(self.module.get_text_features(input_ids=tokens))

    def _pool_regions(self, pixels: torch.Tensor, idx: torch.Tensor, xy: torch.Tensor, with_image: bool
                      ) -> tuple[torch.Tensor | None, torch.Tensor]:
        vm = self.module.vision_model
        cfg = self.module.config.vision_config
        grid = (cfg.image_size // cfg.patch_size,) * 2
        weights = box_patch_weights(xy, grid).to(pixels.device)
        x = vm.embeddings(pixels.to(vm.embeddings.patch_embedding.weight.dtype))
        blocks = [_hf_block(layer) for layer in vm.encoder.layers]
        if self.model_type == "siglip":
            for blk in blocks:
                x = blk.forward(x)
            hidden = vm.post_layernorm(x)
            return (vm.head(hidden) if with_image else None), _siglip_head_regions(vm.head, hidden, idx, weights)
        x = vm.pre_layrnorm(x)
        n_tail = min(self.roi_layers or len(blocks), len(blocks)) if self.roi_pool == "cls" else 0
        for blk in blocks[:len(blocks) - n_tail]:
            x = blk.forward(x)
        if n_tail:
            out = vit_region_tokens(x, blocks[len(blocks) - n_tail:], idx, weights, return_hidden=with_image)
            tokens, x = out if with_image else (out, x)
            pooled = vm.post_layernorm(tokens)
        else:
            pooled = weighted_patch_mean(vm.post_layernorm(x[:, 1:]), idx, weights)
        proj = self.module.visual_projection
        return (proj(vm.post_layernorm(x[:, 0])) if with_image else None), proj(pooled)

    def logit_scale(self) -> torch.Tensor:
        """``exp`` of the learned log inverse temperature (scalar tensor, differentiable)."""
        return self.module.logit_scale.exp().reshape(())

    def config(self) -> dict[str, Any]:
        """JSON dict: ``hf_config`` (the model's ``config.json``), ``preprocess`` and the ROI options."""
        return {"model_type": self.model_type, "hf_config": json.loads(self.module.config.to_json_string()),
                "preprocess": self.geometry.to_dict(), "roi_layers": self.roi_layers, "roi_pool": self.roi_pool}

    def to(self, device: str | torch.device) -> "HFCLIPAdapter":
        """Move the network to ``device``; returns self."""
        self.module.to(device)
        return self

    @property
    def device(self) -> torch.device:
        """Device of the network's parameters."""
        return self.module.logit_scale.device


def _hf_block(layer: torch.nn.Module) -> ViTBlock:
    """A :class:`ViTBlock` view of a ``CLIPEncoderLayer`` / ``SiglipEncoderLayer``."""
    import inspect

    attn = layer.self_attn
    params = inspect.signature(layer.forward).parameters
    legacy = "causal_attention_mask" in params  # transformers 4.x

    def forward(x: torch.Tensor) -> torch.Tensor:
        out = layer(x, None, None) if legacy else layer(x, None)
        return out[0] if isinstance(out, tuple) else out

    return ViTBlock(ln_1=layer.layer_norm1, qkv=lambda h: (attn.q_proj(h), attn.k_proj(h), attn.v_proj(h)),
                    attn_out=attn.out_proj, mlp_branch=lambda x: layer.mlp(layer.layer_norm2(x)),
                    heads=int(attn.num_heads), forward=forward)


def _siglip_head_regions(head: torch.nn.Module, hidden: torch.Tensor, idx: torch.Tensor,
                         weights: torch.Tensor) -> torch.Tensor:
    """SigLIP's attention-pooling head with the probe attending to each box's patches: ``[R, D]``."""
    import torch.nn.functional as F

    mha = head.attention
    width, heads = hidden.shape[-1], mha.num_heads
    d = width // heads
    w_q, w_k, w_v = mha.in_proj_weight.chunk(3)
    b_q, b_k, b_v = mha.in_proj_bias.chunk(3)
    q = F.linear(head.probe.reshape(1, width), w_q, b_q)                      # [1, W]
    k = F.linear(hidden, w_k, b_k)[idx]                                        # [R, P, W]
    v = F.linear(hidden, w_v, b_v)[idx]
    r = idx.shape[0]
    bias = torch.log(weights.to(torch.float32)).to(hidden.dtype)[:, None, None, :]
    att = F.scaled_dot_product_attention(q.expand(r, width).reshape(r, heads, 1, d),
                                         k.view(r, -1, heads, d).transpose(1, 2),
                                         v.view(r, -1, heads, d).transpose(1, 2), attn_mask=bias)
    out = mha.out_proj(att.reshape(r, width))
    return out + head.mlp(head.layernorm(out))


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------

def _folder(name: str) -> Path:
    raw = name[len(PREFIX):] if name.startswith(PREFIX) else name
    if not raw:
        raise InvalidParameterError("A Hugging Face model is named 'hf:DIR' with DIR a folder written by "
                                    "save_pretrained; got an empty path.")
    folder = Path(os.path.expanduser(raw))
    if not folder.is_dir():
        raise CheckpointError(f"{folder} (from {name!r}) is not a folder. 'hf:DIR' takes a folder written by "
                              "CLIPModel.save_pretrained (with the tokenizer and image processor saved next to it); "
                              "ravl does not download models.")
    return folder


def _model_type(folder: Path, config: dict[str, Any] | None = None) -> str:
    if config is None:
        path = folder / "config.json"
        if not path.is_file():
            raise CheckpointError(f"{folder} has no config.json; save the model there with save_pretrained.")
        try:
            config = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise CheckpointError(f"Cannot read {path} ({exc}).") from None
    model_type = str(config.get("model_type", ""))
    if model_type not in _MODEL_TYPES:
        raise CheckpointError(f"{folder / 'config.json'} describes a {model_type or 'model without model_type'!r}; "
                              f"ravl's 'hf:' backend loads {sorted(_MODEL_TYPES)} (CLIPModel, SiglipModel).")
    return model_type


def _load_tokenizer(transformers, folder: Path, model_type: str):
    groups = TOKENIZER_FILES[model_type]
    if not any(all((folder / f).is_file() for f in g) for g in groups):
        expected = " or ".join("+".join(g) for g in groups)
        raise CheckpointError(f"{folder} has no tokenizer: expected {expected} (tokenizer_config.json optional). Save "
                              "the tokenizer next to the model: tokenizer.save_pretrained(DIR).")
    try:
        return transformers.AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except Exception as exc:
        raise CheckpointError(f"Cannot load the tokenizer in {folder} ({type(exc).__name__}: "
                              f"{str(exc)[:300]}).") from None


def _load_geometry(transformers, folder: Path, image_size: int) -> ResizeCropGeometry:
    path = folder / PROCESSOR_FILE
    if not path.is_file():
        raise CheckpointError(f"{folder} has no {PROCESSOR_FILE}; save the image processor next to the model: "
                              "CLIPImageProcessor(...).save_pretrained(DIR).")
    try:
        proc = transformers.AutoImageProcessor.from_pretrained(str(folder), local_files_only=True)
    except Exception:  # fall back to the raw config (e.g. a processor class this transformers lacks)
        try:
            proc = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise CheckpointError(f"Cannot read {path} ({exc}).") from None
    return geometry_from_processor(proc, image_size=image_size, where=str(path))


def _model_class(transformers, model_type: str):
    return getattr(transformers, _MODEL_TYPES[model_type])


def load_hf(name: str, checkpoint: str | os.PathLike | None = None, *, roi_layers: int | str | None = None,
            roi_pool: str | None = None) -> HFCLIPAdapter:
    """Build ``hf:DIR`` (the registry factory behind ``load_model``).

    Args:
        name: ``"hf:DIR"``, ``DIR`` a ``save_pretrained`` folder of a ``CLIPModel`` or
            ``SiglipModel`` with its tokenizer and ``preprocessor_config.json``.
        checkpoint: A ravl checkpoint folder of this model, or a state-dict file.
        roi_layers: CLIP region pooling depth: blocks, or ``"all"`` (default: the checkpoint's,
            else every block).
        roi_pool: CLIP region pooling, ``"cls"`` (default) or ``"patch-mean"``.

    Returns:
        The adapter, in eval mode, on CPU.

    Raises:
        CheckpointError: Missing or unreadable files (the message lists what is expected),
            an unsupported model type or image processor, or weights that do not fit.
    """
    transformers = _transformers(f"model {name!r}")
    folder = _folder(name)
    stored: dict[str, Any] = {}
    state = None
    source: Path | None = None
    if checkpoint is not None:
        path = Path(checkpoint)
        ckpt_dir = path.parent if path.is_file() and path.name in (CONFIG_FILE, "model.safetensors") else path
        if ckpt_dir.is_dir():
            source, config, state = read_checkpoint(ckpt_dir)
            own = config["model"]
            if not own.startswith(PREFIX) or Path(own[len(PREFIX):]).resolve() != folder.resolve():
                raise CheckpointError(f"{source / CONFIG_FILE} is a checkpoint of model {own!r}, not of {name!r}. "
                                      f"Load it with load_model(None, checkpoint={str(source)!r}).")
            stored = config.get("model_config") or {}
            if not isinstance(stored.get("hf_config"), dict):
                raise CheckpointError(f"{source / CONFIG_FILE} has no 'hf_config' in its 'model_config'; re-save the "
                                      "checkpoint with this version of ravl.")
        else:
            source, state = path, read_state_dict(path)
    model_type = _model_type(folder, stored.get("hf_config"))
    cls = _model_class(transformers, model_type)
    if stored:
        config_cls = getattr(transformers, cls.__name__.replace("Model", "Config"))
        module = cls(config_cls.from_dict(copy.deepcopy(stored["hf_config"])))
    else:
        try:
            module = cls.from_pretrained(str(folder), local_files_only=True)
        except Exception as exc:
            raise CheckpointError(f"Cannot load the {cls.__name__} in {folder} ({type(exc).__name__}: "
                                  f"{str(exc)[:300]}). The folder needs config.json and model.safetensors (or "
                                  "pytorch_model.bin) written by save_pretrained.") from None
    if state is not None:
        own = module.state_dict()
        problems = state_mismatches(own, state)
        if problems:
            first = ", ".join(problems[:4]) + (", ..." if len(problems) > 4 else "")
            raise CheckpointError(f"{source} does not fit the {cls.__name__} of {folder}: {len(problems)} mismatched "
                                  f"tensor(s), first {first}. Pass weights of this architecture.")
        with torch.no_grad():
            module.load_state_dict(state, strict=True)
    module.eval()
    image_size = int(module.config.vision_config.image_size)
    if isinstance(stored.get("preprocess"), dict):
        geometry = ResizeCropGeometry.from_dict(stored["preprocess"])
    else:
        geometry = _load_geometry(transformers, folder, image_size)
    tokenizer = _load_tokenizer(transformers, folder, model_type)
    return HFCLIPAdapter(module, folder, tokenizer=tokenizer, geometry=geometry,
                         roi_layers=roi_layers if roi_layers is not None else stored.get("roi_layers"),
                         roi_pool=roi_pool if roi_pool is not None else str(stored.get("roi_pool", "cls")))


# ---------------------------------------------------------------------------------------------
# Export
# ---------------------------------------------------------------------------------------------

def export_hf(model_or_checkpoint_dir: Any, out_dir: str | os.PathLike) -> Path:
    """Write a ``save_pretrained`` folder: weights, ``config.json``, tokenizer, ``preprocessor_config.json``.

    ``CLIPModel.from_pretrained(out_dir)`` (or ``SiglipModel``) then reproduces ravl's
    embeddings, and ``load_model("hf:" + out_dir)`` loads it back.

    Args:
        model_or_checkpoint_dir: An :class:`HFCLIPAdapter` or a ravl checkpoint folder of one.
        out_dir: The folder to write (created; files of the same names are replaced).

    Raises:
        ValueError: For a model that is not a Hugging Face adapter.
    """
    model = model_or_checkpoint_dir
    if isinstance(model, (str, os.PathLike)):
        model = load_checkpoint(model)
    if not isinstance(model, HFCLIPAdapter):
        raise InvalidParameterError(f"export_hf takes a Hugging Face model or its ravl checkpoint; got "
                                    f"{getattr(model, 'name', type(model).__name__)!r}.")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.module.save_pretrained(str(out))
    model.tokenizer.save_pretrained(str(out))
    src = model.folder / PROCESSOR_FILE
    if src.resolve() != (out / PROCESSOR_FILE).resolve():
        shutil.copyfile(src, out / PROCESSOR_FILE)
    logger.debug("Exported %s to %s", model.name, out)
    return out


# ---------------------------------------------------------------------------------------------
# Small models for tests
# ---------------------------------------------------------------------------------------------

def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2 / CLIP byte -> printable unicode character map (the base alphabet of byte-level BPE)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    chars = list(printable)
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in chars)))


def write_byte_bpe_tokenizer(folder: str | os.PathLike, merges: Sequence[tuple[str, str]] = (("t", "h"),
                             ("th", "e</w>"), ("i", "n"), ("e", "r"))) -> tuple[int, int]:
    """Write a small CLIP byte-level BPE vocabulary (``vocab.json`` + ``merges.txt``) to ``folder``.

    Every byte and every byte at a word end is a token, so any text tokenizes; ``merges`` add a
    few multi-character tokens. ``<|startoftext|>`` and ``<|endoftext|>`` come last.

    Returns:
        ``(bos_id, eos_id)``.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    base = list(_bytes_to_unicode().values())
    tokens = base + [c + "</w>" for c in base] + ["".join(m) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8")
    return len(tokens) - 2, len(tokens) - 1


def clip_bpe_merges() -> list[tuple[str, str]]:
    """CLIP's 48,894 BPE merges, from the copy open_clip bundles (no download).

    With :func:`write_byte_bpe_tokenizer` they give the ``vocab.json`` + ``merges.txt`` of OpenAI
    CLIP's tokenizer, which ``transformers.CLIPTokenizer`` loads offline::

        write_byte_bpe_tokenizer(folder, clip_bpe_merges())
    """
    import gzip

    open_clip = require("open_clip", purpose="CLIP's BPE vocabulary (open_clip bundles it)")
    path = Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz"
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        lines = fh.read().split("\n")[1:49152 - 256 - 2 + 1]
    return [tuple(line.split()) for line in lines]


_TEMP_DIRS: list[str] = []


def _cleanup() -> None:
    for d in _TEMP_DIRS:
        shutil.rmtree(d, ignore_errors=True)


atexit.register(_cleanup)


def small_test_model(folder: str | os.PathLike | None = None, *, seed: int = 0, kind: str = "clip") -> HFCLIPAdapter:
    """A small Hugging Face model with random weights, saved to ``folder`` and loaded as ``hf:folder``.

    Args:
        folder: Where to write the ``save_pretrained`` folder; a temporary folder (removed at
            interpreter exit) by default.
        seed: Seed of the weights.
        kind: ``"clip"`` (a ``CLIPModel``: 64 px, 8 px patches, 2 blocks of width 64, text
            width 32, context 16, a byte-level BPE tokenizer) or ``"siglip"`` (the same sizes,
            a squash-resize processor and a word-level fast tokenizer).
    """
    check_choice(kind, "kind", "small_test_model", ("clip", "siglip"))
    transformers = _transformers("the small Hugging Face test model")
    if folder is None:
        folder = tempfile.mkdtemp(prefix="ravl-hf-test-")
        _TEMP_DIRS.append(folder)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vision = dict(image_size=64, patch_size=8, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=2)
    text = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                max_position_embeddings=16)
    if kind == "clip":
        bos, eos = write_byte_bpe_tokenizer(folder)
        transformers.CLIPTokenizer.from_pretrained(str(folder), local_files_only=True).save_pretrained(str(folder))
        config = transformers.CLIPConfig(text_config=dict(text, vocab_size=eos + 1, bos_token_id=bos, eos_token_id=eos,
                                                          pad_token_id=eos), vision_config=vision, projection_dim=32)
        processor = transformers.CLIPImageProcessor(size={"shortest_edge": 64}, crop_size={"height": 64, "width": 64})
        model_cls = transformers.CLIPModel
    else:
        vocab_size = _write_word_tokenizer(folder)
        config = transformers.SiglipConfig(text_config=dict(text, vocab_size=vocab_size, pad_token_id=0, bos_token_id=1,
                                                            eos_token_id=2, projection_size=64),
                                           vision_config=vision)
        processor = transformers.SiglipImageProcessor(size={"height": 64, "width": 64}, resample=2,
                                                      image_mean=[0.5] * 3, image_std=[0.5] * 3)
        model_cls = transformers.SiglipModel
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        module = model_cls(config)
    module.save_pretrained(str(folder))
    processor.save_pretrained(str(folder))
    return load_hf(PREFIX + str(folder))


def _write_word_tokenizer(folder: Path) -> int:
    """A small word-level fast tokenizer (``tokenizer.json``) for the SigLIP test model; returns its vocab size."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

    transformers = _transformers("the small Hugging Face test model")
    words = ["<pad>", "<s>", "</s>", "<unk>", "a", "photo", "of", "the", "number", "is", "digit", "zero", "one", "two",
             "three", "four", "five", "six", "seven", "eight", "nine", "red", "square"]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 2)])
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>",
                                                eos_token="</s>", unk_token="<unk>")
    fast.save_pretrained(str(folder))
    return len(words)
