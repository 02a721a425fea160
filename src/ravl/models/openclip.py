"""open_clip models behind ravl's adapter protocol: ``load_model("open_clip:ARCH")``.

Any architecture of ``open_clip.list_models()`` builds (random weights by default, seeded);
weights come from

* ``checkpoint=FILE``: open_clip's own training output (a dict with ``state_dict`` whose keys
  carry DDP's ``module.`` prefix) or a plain state dict (``.pt``, ``.pth``, ``.bin``,
  ``.safetensors``);
* ``checkpoint=DIR``: a ravl checkpoint folder (``save_checkpoint``), or an open_clip
  ``local-dir`` folder (``open_clip_config.json`` + weights, what :func:`export_open_clip`
  writes for a folder);
* ``pretrained=TAG``: resolved by open_clip itself (``open_clip.list_pretrained()``). ravl runs
  offline, so this works only when open_clip's cache already holds the file.

Weights of another architecture raise :class:`~ravl.exceptions.CheckpointError` naming the
open_clip architecture whose tensors match them best and the first mismatched keys.

**Preprocessing** is open_clip's inference transform, reimplemented with PIL + NumPy + torch
(:class:`~ravl.models.geometry.ResizeCropGeometry`; equal to open_clip's torchvision transform
to float rounding, tested): resize (shortest side to the input size by default, with the
model's interpolation), centre crop, scale to [0, 1], normalise with the model's mean/std.
Because of the centre crop, a box of the original image may be cut or lie outside what the
model sees; :meth:`OpenCLIPAdapter.map_boxes` says which.

**Region embeddings** (``encode_roi``, one backbone pass per image; see
:mod:`ravl.models.pooling`):

* ModifiedResNet (RN50, ...): RoIAlign of each box from the last feature map onto the
  attention pool's ``7 x 7`` grid (``image_size / 32``), then the attention pool. A full-image
  box gives the image embedding (to float rounding).
* VisionTransformer (ViT-B-16, ...): a per-box copy of the class token runs through the last
  ``roi_layers`` blocks (default: all of them) attending only to itself and the box's patches
  (area-weighted; boxes smaller than one patch are grown to one patch), while the patch tokens
  are those of the whole-image pass. A full-image box gives the image embedding (to float
  rounding) for any ``roi_layers``. ``roi_pool="patch-mean"`` instead averages the final patch
  tokens under the box (after ``ln_post``) and projects them (no such identity unless the tower
  pools by averaging); for ``pool_type="avg"`` towers that is their own pooling.

Why the region class token through every block (``benchmarks/vit_roi_pooling.py``: a small
open_clip ViT, 56 px, 8 x 8 patches, width 128, 4 blocks, fine-tuned from scratch with
``ravl.finetune`` on the red-square <-> "nine" digit setting, V = 0.95, 10,000 images, 6 epochs;
zero-shot with the caption templates on the 4,000 quadrant regions of the 1,000 evaluation
``val`` images; image accuracy 0.899). ``masked`` mode is the reference (ravl's default):

=============  ============  =====================  ==============  ==============================
pooling        cos(masked)   same class as masked   digit regions   red-square regions -> "nine"
=============  ============  =====================  ==============  ==============================
masked         1.000         1.000                  0.911           1.000
cls, 1 block   0.399         0.352                  0.923           0.366
cls, 2 blocks  0.455         0.405                  0.919           0.748
cls, all (4)   **0.910**     **0.649**              0.905           **1.000**
patch-mean     0.237         0.310                  0.564           0.038
=============  ============  =====================  ==============  ==============================

Only the class token through every block keeps what the masked region shows: with fewer blocks
the token starts from the image's own class token, which already summarises the whole image,
so a red square alone is called "nine" only 37 % (1 block) or 75 % (2 blocks) of the time and
discovery would miss the shortcut; patch tokens are never trained to live in the joint space.
(Agreement is below 1 mostly on the 2,000 empty quadrants, whose class is arbitrary.) The cost
is one token's attention and MLP per box and block, small next to the image's ``1 + P`` tokens.

Projection layer for ``--trainable image-projection``: ``visual.proj`` (ViT) or
``visual.attnpool.c_proj`` (ModifiedResNet).
"""

from __future__ import annotations

import atexit
import contextlib
import copy
import functools
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from ravl.exceptions import CheckpointError, InvalidParameterError, ModelNotFoundError, RegionPoolingNotSupportedError
from ravl.models.base import load_checkpoint
from ravl.models.checkpoint import CONFIG_FILE, WEIGHTS_FILE, is_checkpoint, read_checkpoint
from ravl.models.geometry import ResizeCropGeometry
from ravl.models.pooling import (
    ViTBlock,
    attnpool_regions,
    box_patch_weights,
    check_roi_layers,
    vit_region_tokens,
    weighted_patch_mean,
)
from ravl.models.pretrained import PretrainedCLIPMixin
from ravl.models.weights import read_state_dict, state_mismatches
from ravl.utils.io import atomic_write
from ravl.utils.optional import require
from ravl.utils.validation import check_choice, check_int

__all__ = [
    "PREFIX",
    "ROI_POOLS",
    "OpenCLIPAdapter",
    "load_open_clip",
    "export_open_clip",
    "register_open_clip_config",
    "read_state_dict",
    "small_test_model",
    "TEST_CONFIGS",
]

logger = logging.getLogger(__name__)

#: Registry prefix of open_clip models.
PREFIX = "open_clip:"
#: How a ViT pools a region in ``encode_roi`` (see the module docstring).
ROI_POOLS: tuple[str, ...] = ("cls", "patch-mean")
#: Weight files recognised inside an open_clip ``local-dir`` folder, in order of preference.
LOCAL_DIR_WEIGHTS = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin", "open_clip_pytorch_model.pth")
LOCAL_DIR_CONFIG = "open_clip_config.json"

_TEXT_SMALL = {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2}
#: Small open_clip architectures for tests and the adapter contract battery (random weights).
TEST_CONFIGS: dict[str, dict[str, Any]] = {
    # 64 px, 8 px patches (8 x 8 grid), 2 blocks of width 64.
    "ravl-test-vit": {"embed_dim": 32, "text_cfg": dict(_TEXT_SMALL),
                      "vision_cfg": {"image_size": 64, "patch_size": 8, "width": 64, "head_width": 32, "layers": 2}},
    # 96 px ModifiedResNet of stem width 8 (final map 3 x 3, 256 channels, 8 heads).
    "ravl-test-rn": {"embed_dim": 32, "text_cfg": dict(_TEXT_SMALL),
                     "vision_cfg": {"image_size": 96, "layers": [1, 1, 1, 1], "width": 8, "head_width": 32}},
}

_DEFAULT_PREPROCESS = {"mean": (0.48145466, 0.4578275, 0.40821073), "std": (0.26862954, 0.26130258, 0.27577711),
                       "interpolation": "bicubic", "resize_mode": "shortest", "fill_color": 0}


def _open_clip(purpose: str):
    return require("open_clip", purpose=purpose)


# ---------------------------------------------------------------------------------------------
# Architecture configs
# ---------------------------------------------------------------------------------------------

_CONFIG_DIR: str | None = None


def register_open_clip_config(arch: str, model_cfg: dict[str, Any]) -> None:
    """Make an architecture config known to open_clip in this process (``open_clip.add_model_config``).

    Idempotent for an identical config. The JSON file lives in a temporary folder removed at
    interpreter exit.

    Raises:
        ValueError: When ``arch`` already names a different config (open_clip's or one
            registered before): ravl never shadows an architecture silently.
    """
    open_clip = _open_clip(f"open_clip architecture {arch!r}")
    if not all(k in model_cfg for k in ("embed_dim", "vision_cfg", "text_cfg")):
        raise InvalidParameterError("An open_clip model config needs 'embed_dim', 'vision_cfg' and 'text_cfg'; the "
                                    f"one for {arch!r} has {sorted(model_cfg)}.")
    if arch in open_clip.list_models():
        current = open_clip.get_model_config(arch)
        if _json_equal(current, model_cfg):
            return
        raise InvalidParameterError(f"open_clip already has an architecture {arch!r} with another config "
                                    f"(differs in {_diff_keys(current, model_cfg)}); register the new one under "
                                    "another name.")
    global _CONFIG_DIR
    if _CONFIG_DIR is None:
        _CONFIG_DIR = tempfile.mkdtemp(prefix="ravl-open-clip-configs-")
        atexit.register(shutil.rmtree, _CONFIG_DIR, True)
    path = Path(_CONFIG_DIR) / f"{arch}.json"
    path.write_text(json.dumps(model_cfg), encoding="utf-8")
    open_clip.add_model_config(path)
    if arch not in open_clip.list_models():  # pragma: no cover - open_clip API change
        raise RuntimeError(f"open_clip.add_model_config did not register {arch!r}.")


def _json_equal(a: Any, b: Any) -> bool:
    return json.loads(json.dumps(a)) == json.loads(json.dumps(b))


def _diff_keys(a: dict[str, Any], b: dict[str, Any], prefix: str = "") -> list[str]:
    out = []
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += _diff_keys(va, vb, f"{prefix}{k}.")
        elif not _json_equal(va, vb):
            out.append(f"{prefix}{k}")
    return out


def _preprocess_dict(pp: dict[str, Any]) -> dict[str, Any]:
    """open_clip's preprocess cfg -> ravl's JSON ``preprocess`` entry."""
    size = pp.get("size", 224)
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    return {"image_size": [int(h), int(w)], "mean": [float(v) for v in pp.get("mean", _DEFAULT_PREPROCESS["mean"])],
            "std": [float(v) for v in pp.get("std", _DEFAULT_PREPROCESS["std"])],
            "interpolation": str(pp.get("interpolation", "bicubic")),
            "resize_mode": str(pp.get("resize_mode", "shortest")), "fill_color": int(pp.get("fill_color", 0))}


def _open_clip_preprocess(pre: dict[str, Any]) -> dict[str, Any]:
    """ravl's ``preprocess`` entry -> open_clip's preprocess cfg keys."""
    return {"size": tuple(pre["image_size"]), "mean": tuple(pre["mean"]), "std": tuple(pre["std"]),
            "interpolation": pre["interpolation"], "resize_mode": pre["resize_mode"],
            "fill_color": pre["fill_color"]}


def _geometry(pre: dict[str, Any]) -> ResizeCropGeometry:
    """The ResizeCropGeometry of open_clip's inference transform for a ``preprocess`` entry."""
    h, w = pre["image_size"]
    interp = "bilinear" if pre["interpolation"] == "bilinear" else "bicubic"  # 'random' means bicubic at inference
    mode = pre["resize_mode"]
    common = {"size": (h, w), "mean": tuple(pre["mean"]), "std": tuple(pre["std"]), "crop_offset": "round"}
    if mode == "shortest":
        if h == w:
            return ResizeCropGeometry(resize="shortest", interpolation=interp, **common)
        # open_clip resizes non-square inputs with timm's ResizeKeepRatio, always bicubic.
        return ResizeCropGeometry(resize="shortest-keep-ratio", interpolation="bicubic", **common)
    if mode == "longest":
        return ResizeCropGeometry(resize="longest", interpolation=interp, fill=int(pre["fill_color"]), **common)
    if mode == "squash":
        return ResizeCropGeometry(resize="squash", interpolation=interp, center_crop=False, **common)
    raise InvalidParameterError(f"Unsupported open_clip resize_mode {mode!r}; expected 'shortest', 'longest' or "
                                "'squash'.")


# ---------------------------------------------------------------------------------------------
# The adapter
# ---------------------------------------------------------------------------------------------

class OpenCLIPAdapter(PretrainedCLIPMixin):
    """:class:`~ravl.models.base.VisionLanguageModel` adapter around an open_clip ``CLIP`` model.

    Build it with ``ravl.load_model("open_clip:ARCH", ...)`` (see :func:`load_open_clip`).

    Args:
        module: The open_clip model (``open_clip.create_model(...)``).
        arch: Its architecture name (``"RN50"``, ``"ViT-B-16"``, ...).
        model_cfg: The open_clip model config it was built from.
        preprocess: ravl's preprocessing entry (``image_size``, ``mean``, ``std``,
            ``interpolation``, ``resize_mode``, ``fill_color``).
        roi_layers: ViT only: final blocks in which a region's class token attends to its box
            (``None`` or ``"all"``: every block, the default; see the module docstring).
        roi_pool: ViT only: ``"cls"`` or ``"patch-mean"`` (see the module docstring).

    Example:
        >>> import ravl
        >>> model = ravl.load_model("open_clip:RN50")          # doctest: +SKIP
        >>> model.encode_text(model.tokenize(["a photo of a dog"])).shape   # doctest: +SKIP
        torch.Size([1, 1024])
    """

    def __init__(self, module: torch.nn.Module, arch: str, *, model_cfg: dict[str, Any], preprocess: dict[str, Any],
                 roi_layers: int | str | None = None, roi_pool: str = "cls"):
        open_clip = _open_clip(f"model 'open_clip:{arch}'")
        self.name = PREFIX + arch
        self.arch = arch
        self.module = module
        self.model_cfg = copy.deepcopy(model_cfg)
        self.preprocess_config = dict(preprocess)
        self.geometry = _geometry(self.preprocess_config)
        self.image_size = tuple(self.geometry.size)
        self.embed_dim = int(model_cfg["embed_dim"])
        self.roi_pool = check_choice(roi_pool, "roi_pool", "OpenCLIPAdapter", ROI_POOLS)
        self.roi_layers = check_roi_layers(roi_layers, "OpenCLIPAdapter")
        self._tokenizer = _tokenizer(open_clip, arch)
        visual = module.visual
        kind = type(visual).__name__
        if kind == "ModifiedResNet":
            self.image_projection_prefixes: tuple[str, ...] = ("visual.attnpool.c_proj.",)
        elif isinstance(getattr(visual, "proj", None), torch.nn.Parameter):
            self.image_projection_prefixes = ("visual.proj",)
        elif hasattr(visual, "head"):
            self.image_projection_prefixes = ("visual.head.",)
        else:
            self.image_projection_prefixes = ()

    IMAGE_CHILDREN = ("visual",)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """open_clip's activation checkpointing in both towers (less memory, more time)."""
        self.module.set_grad_checkpointing(bool(enable))

    def export(self, out: str | os.PathLike) -> dict[str, Any]:
        """Weights open_clip loads itself (:func:`export_open_clip`), with how to load them."""
        res = export_open_clip(self, out)
        path = res["path"]
        if path.suffix:
            extra = "".join(f", {k}={v!r}" for k, v in res["kwargs"].items())
            how = f"open_clip.create_model_and_transforms({self.arch!r}, pretrained={str(path)!r}{extra})"
        else:
            how = f"open_clip.create_model_and_transforms('local-dir:{path}')"
        return {**res, "how_to_load": (how,)}

    def __repr__(self) -> str:
        n = sum(p.numel() for p in self.module.parameters())
        return f"OpenCLIPAdapter(name={self.name!r}, params={n:,}, device={self.device})"

    # -- protocol --------------------------------------------------------------------------------
    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        """open_clip's tokenizer for the architecture: ``[N, context_length]`` int64 (CPU)."""
        texts = self._texts(texts)
        return self._tokenizer(texts).long()

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        """Image embeddings ``[N, D]`` (not normalised)."""
        return self.module.encode_image(pixels)

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        """Text embeddings ``[N, D]`` (not normalised)."""
        return self.module.encode_text(tokens)

    def _pool_regions(self, pixels: torch.Tensor, idx: torch.Tensor, xy: torch.Tensor, with_image: bool
                      ) -> tuple[torch.Tensor | None, torch.Tensor]:
        """Raises :class:`~ravl.exceptions.RegionPoolingNotSupportedError` for image towers other
        than open_clip's ModifiedResNet and VisionTransformer (class-token or average pooling)."""
        visual = self.module.visual
        kind = type(visual).__name__
        if kind == "ModifiedResNet":
            return self._roi_resnet(visual, pixels, idx, xy, with_image)
        if kind == "VisionTransformer":
            return self._roi_vit(visual, pixels, idx, xy, with_image)
        raise RegionPoolingNotSupportedError(
            f"encode_roi supports open_clip's ModifiedResNet and VisionTransformer image towers; {self.name} has a "
            f"{kind}. Use region mode 'masked' or 'crop'.")

    def logit_scale(self) -> torch.Tensor:
        """``exp`` of the learned log inverse temperature (scalar tensor, differentiable)."""
        return self.module.logit_scale.exp().reshape(())

    def config(self) -> dict[str, Any]:
        """JSON dict: ``arch``, ``model_cfg`` (open_clip's), ``preprocess`` and the ROI options."""
        return {"arch": self.arch, "model_cfg": copy.deepcopy(self.model_cfg),
                "preprocess": dict(self.preprocess_config), "roi_layers": self.roi_layers, "roi_pool": self.roi_pool}

    def to(self, device: str | torch.device) -> "OpenCLIPAdapter":
        """Move the network to ``device``; returns self."""
        self.module.to(device)
        return self

    @property
    def device(self) -> torch.device:
        """Device of the network's parameters."""
        return next(self.module.parameters()).device

    # -- region pooling --------------------------------------------------------------------------
    def _roi_resnet(self, visual, pixels: torch.Tensor, idx: torch.Tensor, xy: torch.Tensor, with_image: bool
                    ) -> tuple[torch.Tensor | None, torch.Tensor]:
        x = pixels.to(visual.conv1.weight.dtype)
        x = visual.stem(x)
        for layer in (visual.layer1, visual.layer2, visual.layer3, visual.layer4):
            x = layer(x)
        pool = visual.attnpool
        regions = attnpool_regions(x, idx, xy.to(x.dtype), positional_embedding=pool.positional_embedding,
                                   q_proj=pool.q_proj, k_proj=pool.k_proj, v_proj=pool.v_proj, c_proj=pool.c_proj,
                                   num_heads=pool.num_heads)
        return (pool(x) if with_image else None), regions

    def _vit_blocks(self, visual) -> list[ViTBlock]:
        blocks = []
        batch_first = getattr(visual.transformer, "batch_first", True)
        for k, blk in enumerate(visual.transformer.resblocks):
            attn = getattr(blk, "attn", None)
            if (type(blk).__name__ != "ResidualAttentionBlock" or not isinstance(attn, torch.nn.MultiheadAttention)
                    or attn.in_proj_weight is None):
                raise RegionPoolingNotSupportedError(
                    f"encode_roi supports ViTs built from open_clip's ResidualAttentionBlock; block {k} of {self.name} "
                    f"is a {type(blk).__name__}. Use region mode 'masked' or 'crop'.")

            def qkv(h, attn=attn):
                return torch.nn.functional.linear(h, attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)

            def fwd(x, blk=blk):
                return blk(x) if batch_first else blk(x.transpose(0, 1)).transpose(0, 1)

            blocks.append(ViTBlock(ln_1=blk.ln_1, qkv=qkv, attn_out=lambda a, blk=blk: blk.ls_1(blk.attn.out_proj(a)),
                                   mlp_branch=lambda x, blk=blk: blk.ls_2(blk.mlp(blk.ln_2(x))),
                                   heads=attn.num_heads, forward=fwd))
        return blocks

    def _roi_vit(self, visual, pixels: torch.Tensor, idx: torch.Tensor, xy: torch.Tensor, with_image: bool
                 ) -> tuple[torch.Tensor | None, torch.Tensor]:
        if getattr(visual, "attn_pool", None) is not None or visual.pool_type not in ("tok", "avg"):
            raise RegionPoolingNotSupportedError(
                f"encode_roi supports ViTs with class-token or average pooling; {self.name} pools with an attentional "
                "pooler. Use region mode 'masked' or 'crop'.")
        blocks = self._vit_blocks(visual)
        weights = box_patch_weights(xy, tuple(visual.grid_size)).to(pixels.device)
        # Token embeddings as in the image pass (patch dropout is skipped: regions need every patch).
        x = visual.conv1(pixels.to(visual.conv1.weight.dtype))                 # [N, W, gh, gw]
        x = x.flatten(2).transpose(1, 2)                                        # [N, P, W]
        cls = visual.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + visual.positional_embedding.to(x.dtype)
        x = visual.ln_pre(x)
        use_cls = visual.pool_type == "tok" and self.roi_pool == "cls"
        n_tail = min(self.roi_layers or len(blocks), len(blocks)) if use_cls else 0
        for blk in blocks[:len(blocks) - n_tail]:
            x = blk.forward(x)
        if use_cls:
            out = vit_region_tokens(x, blocks[len(blocks) - n_tail:], idx, weights, return_hidden=with_image)
            tokens, x = out if with_image else (out, x)
            pooled = visual.ln_post(tokens)
        elif visual.pool_type == "avg" and visual.final_ln_after_pool:
            pooled = visual.ln_post(weighted_patch_mean(x[:, 1:], idx, weights))
        else:
            pooled = weighted_patch_mean(visual.ln_post(x[:, 1:]), idx, weights)
        image = None
        if with_image:  # the tower's own pooling of the final hidden states
            if visual.pool_type == "tok":
                image = visual.ln_post(x[:, 0])
            elif visual.final_ln_after_pool:
                image = visual.ln_post(x[:, 1:].mean(dim=1))
            else:
                image = visual.ln_post(x[:, 1:]).mean(dim=1)
        proj = visual.proj
        if proj is None:
            return image, pooled
        return (None if image is None else image @ proj), pooled @ proj


def _tokenizer(open_clip, arch: str):
    try:
        return open_clip.get_tokenizer(arch)
    except Exception as exc:  # network or cache problems of Hugging Face tokenizers
        raise CheckpointError(
            f"open_clip could not load the tokenizer of {arch!r} ({type(exc).__name__}: {exc}). Architectures with a "
            "Hugging Face tokenizer need it in the local Hugging Face cache (ravl does not download); copy the cache "
            "from a machine with network access.") from None


# ---------------------------------------------------------------------------------------------
# Weights
# ---------------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=256)
def _arch_signature(arch: str, cfg_json: str) -> dict[str, tuple[int, ...]] | None:
    """Tensor shapes of an architecture, built on the meta device (no memory, no init cost)."""
    open_clip = _open_clip("architecture matching")
    cfg = json.loads(cfg_json)
    if "timm_model_name" in cfg.get("vision_cfg", {}) or "hf_model_name" in cfg.get("text_cfg", {}) \
            or "multimodal_cfg" in cfg:
        return None
    cls = open_clip.CustomTextCLIP if cfg.pop("custom_text", False) else open_clip.CLIP
    try:
        with torch.device("meta"):
            model = cls(**cfg)
    except Exception:  # configs that need optional towers
        return None
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _closest_arch(state: dict[str, torch.Tensor], exclude: str) -> tuple[str | None, int, int]:
    """``(arch, matching tensors, tensors compared)`` of the open_clip architecture fitting ``state`` best."""
    open_clip = _open_clip("architecture matching")
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    is_rn = any(k.startswith("visual.attnpool.") for k in shapes)
    is_vit = "visual.class_embedding" in shapes
    best: tuple[float, str | None, int, int] = (-1.0, None, 0, 0)
    for arch in open_clip.list_models():
        if arch == exclude:
            continue
        cfg = open_clip.get_model_config(arch)
        layers = cfg.get("vision_cfg", {}).get("layers")
        if (is_rn and not isinstance(layers, (list, tuple))) or (is_vit and isinstance(layers, (list, tuple))):
            continue
        sig = _arch_signature(arch, json.dumps(cfg, sort_keys=True))
        if sig is None:
            continue
        match = sum(1 for k, s in shapes.items() if sig.get(k) == s)
        total = len(set(shapes) | set(sig))
        score = match / total
        # Ties (e.g. RN50 and RN50-quickgelu share every shape) go to the shorter name.
        if score > best[0] or (score == best[0] and best[1] is not None and len(arch) < len(best[1])):
            best = (score, arch, match, total)
    return best[1], best[2], best[3]


def _load_weights(module: torch.nn.Module, state: dict[str, torch.Tensor], source: Path, arch: str) -> None:
    """Strictly load ``state`` into ``module`` or raise a CheckpointError naming the closest architecture."""
    own = module.state_dict()
    for k in ("logit_scale", "logit_bias"):  # scalar vs [1] differences between open_clip versions
        if k in state and k in own and state[k].numel() == own[k].numel():
            state[k] = state[k].reshape(own[k].shape)
    problems = state_mismatches(own, state)
    if problems:
        best, match, total = _closest_arch(state, exclude=arch)
        first = ", ".join(problems[:4]) + (", ..." if len(problems) > 4 else "")
        if best is not None and match >= 0.5 * total:
            hint = (f" Its tensors match open_clip architecture {best!r} best ({match} of {total}); load it with "
                    f"load_model('open_clip:{best}', checkpoint=...).")
        else:
            hint = " No open_clip architecture matches it closely; is it an open_clip model?"
        raise CheckpointError(f"{source} does not fit open_clip architecture {arch!r}: {len(problems)} mismatched "
                              f"tensor(s), first {first}.{hint}")
    with torch.no_grad():
        module.load_state_dict(state, strict=True)


# ---------------------------------------------------------------------------------------------
# Building
# ---------------------------------------------------------------------------------------------

class _DropRandomInitWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "No pretrained weights loaded" not in record.getMessage()


@contextlib.contextmanager
def _quiet_random_init():
    """open_clip warns that a model without ``pretrained`` is initialised randomly; ravl loads the
    user's weights right after (or was asked for random weights), so the warning would mislead."""
    root = logging.getLogger()
    f = _DropRandomInitWarning()
    root.addFilter(f)
    try:
        yield
    finally:
        root.removeFilter(f)


def _create(open_clip, arch: str, *, pretrained: str | None = None, preprocess: dict[str, Any] | None = None,
            cache_dir: str | None = None) -> torch.nn.Module:
    kwargs: dict[str, Any] = {}
    if preprocess is not None:
        kwargs["force_preprocess_cfg"] = _open_clip_preprocess(preprocess)
    if pretrained is not None:
        kwargs["pretrained"] = pretrained
        kwargs["cache_dir"] = cache_dir
        return open_clip.create_model(arch, **kwargs)
    try:
        with _quiet_random_init():
            return open_clip.create_model(arch, **kwargs)
    except Exception as exc:  # towers from timm / Hugging Face need those libraries (and HF configs offline)
        raise ModelNotFoundError(f"open_clip could not build {arch!r} ({type(exc).__name__}: {str(exc)[:300]}). "
                                 "Architectures with timm or Hugging Face towers need timm / transformers installed "
                                 "and, for Hugging Face towers, their config in the local Hugging Face cache.") from exc


def load_open_clip(name: str, checkpoint: str | os.PathLike | None = None, *, pretrained: str | None = None,
                   seed: int = 0, cache_dir: str | os.PathLike | None = None, roi_layers: int | str | None = None,
                   roi_pool: str | None = None) -> OpenCLIPAdapter:
    """Build ``open_clip:ARCH`` (the registry factory behind ``load_model``).

    Args:
        name: ``"open_clip:ARCH"`` with ``ARCH`` in ``open_clip.list_models()``.
        checkpoint: A ravl checkpoint folder, an open_clip ``local-dir`` folder, or a weights
            file (open_clip's training checkpoint or a plain state dict).
        pretrained: An open_clip pretrained tag (``open_clip.list_pretrained_tags_by_model(ARCH)``)
            or weights file, resolved by open_clip. Not with ``checkpoint``.
        seed: Seed of the random weights (without ``checkpoint`` and ``pretrained``).
        cache_dir: open_clip's download cache for ``pretrained`` tags.
        roi_layers: ViT region pooling depth: blocks, or ``"all"`` (default: the checkpoint's,
            else every block).
        roi_pool: ViT region pooling, ``"cls"`` (default) or ``"patch-mean"``.

    Returns:
        The adapter, in eval mode, on CPU.

    Raises:
        CheckpointError: Unreadable or mismatched weights, or a pretrained tag open_clip cannot
            fetch offline.
        ValueError: An unknown architecture (the message lists close names).
    """
    import difflib

    open_clip = _open_clip(f"model {name!r}")
    arch = name[len(PREFIX):] if name.startswith(PREFIX) else name
    if checkpoint is not None and pretrained is not None:
        raise InvalidParameterError(f"Pass either checkpoint= or pretrained= for {name!r}, not both.")
    seed = check_int(seed, "seed", "load_model('open_clip:...')", low=0)
    path = None if checkpoint is None else Path(checkpoint)
    stored: dict[str, Any] | None = None
    state: dict[str, torch.Tensor] | None = None
    source = path
    preprocess: dict[str, Any] | None = None
    if path is not None:
        ckpt_dir = path.parent if path.is_file() and path.name in (CONFIG_FILE, WEIGHTS_FILE) else path
        if ckpt_dir.is_dir() and (ckpt_dir / LOCAL_DIR_CONFIG).is_file() and not is_checkpoint(ckpt_dir):
            stored, state, source = _read_local_dir(ckpt_dir)
            preprocess = stored["preprocess"]
        elif ckpt_dir.is_dir() or is_checkpoint(ckpt_dir):
            source, config, state = read_checkpoint(ckpt_dir, expect_model=PREFIX + arch)
            stored = config.get("model_config") or {}
            if not isinstance(stored.get("model_cfg"), dict) or not isinstance(stored.get("preprocess"), dict):
                raise CheckpointError(f"{source / CONFIG_FILE} has no open_clip 'model_cfg'/'preprocess' in its "
                                      "'model_config'; re-save the checkpoint with this version of ravl.")
            preprocess = stored["preprocess"]
        else:
            state = read_state_dict(path)
    if stored is not None:
        cfg = stored["model_cfg"]
        if arch in open_clip.list_models():
            current = open_clip.get_model_config(arch)
            if not _json_equal(current, cfg):
                raise CheckpointError(
                    f"{source}: the stored config of {arch!r} differs from open_clip's (in "
                    f"{_diff_keys(current, cfg)[:5]}); it was written with another open_clip version or a custom "
                    "config of the same name. Load it where that config is registered.")
        else:
            register_open_clip_config(arch, cfg)
    if arch not in open_clip.list_models():
        close = difflib.get_close_matches(arch, open_clip.list_models(), n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(repr(PREFIX + c) for c in close)}?" if close else ""
        raise InvalidParameterError(f"Unknown open_clip architecture {arch!r}.{hint} See open_clip.list_models() "
                                    f"({len(open_clip.list_models())} architectures), or register your own config "
                                    "with ravl.models.openclip.register_open_clip_config.")

    if pretrained is not None:
        try:
            module = _create(open_clip, arch, pretrained=str(pretrained),
                             cache_dir=None if cache_dir is None else str(cache_dir))
        except Exception as exc:
            tags = open_clip.list_pretrained_tags_by_model(arch)
            raise CheckpointError(
                f"open_clip could not load pretrained={pretrained!r} for {arch!r} ({type(exc).__name__}: "
                f"{str(exc)[:300]}). Known tags: {tags}. ravl runs offline: a tag works only when open_clip's cache "
                f"({cache_dir or '~/.cache/huggingface or ~/.cache/clip'}) already holds its file; otherwise download "
                "it on a machine with network access and pass checkpoint=FILE.") from None
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            module = _create(open_clip, arch, preprocess=preprocess)
    if state is not None:
        _load_weights(module, state, source, arch)
    module.eval()
    pre = preprocess or _preprocess_dict(open_clip.get_model_preprocess_cfg(module))
    opts = stored or {}
    return OpenCLIPAdapter(module, arch, model_cfg=open_clip.get_model_config(arch), preprocess=pre,
                           roi_layers=roi_layers if roi_layers is not None else opts.get("roi_layers"),
                           roi_pool=roi_pool if roi_pool is not None else str(opts.get("roi_pool", "cls")))


def _read_local_dir(folder: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor], Path]:
    """An open_clip ``local-dir`` folder: ``({"model_cfg", "preprocess"}, state, weights file)``."""
    cfg_path = folder / LOCAL_DIR_CONFIG
    try:
        raw = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"Cannot read {cfg_path} ({exc}).") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("model_cfg"), dict):
        raise CheckpointError(f"{cfg_path} has no 'model_cfg'; it is not an open_clip local-dir config.")
    weights = next((folder / n for n in LOCAL_DIR_WEIGHTS if (folder / n).is_file()), None)
    if weights is None:
        raise CheckpointError(f"{folder} has {LOCAL_DIR_CONFIG} but none of the weight files "
                              f"{list(LOCAL_DIR_WEIGHTS)}.")
    pp = dict(_DEFAULT_PREPROCESS)
    pp["size"] = raw["model_cfg"]["vision_cfg"].get("image_size", 224)
    pp.update({k: v for k, v in (raw.get("preprocess_cfg") or {}).items() if v is not None})
    return {"model_cfg": raw["model_cfg"], "preprocess": _preprocess_dict(pp)}, read_state_dict(weights), weights


# ---------------------------------------------------------------------------------------------
# Export
# ---------------------------------------------------------------------------------------------

def export_open_clip(model_or_checkpoint_dir: Any, out: str | os.PathLike) -> dict[str, Any]:
    """Write weights open_clip itself loads.

    Args:
        model_or_checkpoint_dir: An :class:`OpenCLIPAdapter` or a ravl checkpoint folder of one.
        out: A file (``.safetensors``, ``.pt``, ``.pth`` or ``.bin``) for
            ``open_clip.create_model_and_transforms(ARCH, pretrained=FILE)``, or a folder (no
            such suffix) written in open_clip's ``local-dir`` format (``open_clip_config.json``
            with the model and preprocessing config + ``open_clip_model.safetensors``) for
            ``create_model_and_transforms("local-dir:FOLDER")``, which needs no registered
            architecture.

    Returns:
        ``{"path", "arch", "kwargs"}``: ``kwargs`` are the ``create_model_and_transforms``
        arguments that reproduce ravl's preprocessing with the file (``image_mean`` etc., only
        those that differ from open_clip's defaults).

    Raises:
        ValueError: For a model that is not an open_clip adapter.
    """
    model = model_or_checkpoint_dir
    if isinstance(model, (str, os.PathLike)):
        model = load_checkpoint(model)
    if not isinstance(model, OpenCLIPAdapter):
        raise InvalidParameterError(f"export_open_clip takes an open_clip model or its ravl checkpoint; got "
                                    f"{getattr(model, 'name', type(model).__name__)!r}.")
    state = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in model.module.state_dict().items()}
    pre = model.preprocess_config
    defaults = {"image_mean": tuple(_DEFAULT_PREPROCESS["mean"]), "image_std": tuple(_DEFAULT_PREPROCESS["std"]),
                "image_interpolation": "bicubic", "image_resize_mode": "shortest"}
    current = {"image_mean": tuple(pre["mean"]), "image_std": tuple(pre["std"]),
               "image_interpolation": pre["interpolation"], "image_resize_mode": pre["resize_mode"]}
    kwargs = {k: v for k, v in current.items() if v != defaults[k]}
    out = Path(out)
    if out.suffix in (".safetensors", ".pt", ".pth", ".bin"):
        out.parent.mkdir(parents=True, exist_ok=True)
        if out.suffix == ".safetensors":
            atomic_write(out, lambda tmp: save_file(state, tmp, metadata={"format": "pt"}))
        else:
            atomic_write(out, lambda tmp: torch.save(state, tmp))
        if kwargs:
            logger.warning("open_clip applies its default preprocessing to pretrained=%s; pass %s to "
                           "create_model_and_transforms, or export to a folder, to get ravl's.", out, kwargs)
        if model.arch not in _builtin_archs():
            logger.warning("%r is not a built-in open_clip architecture: register its config "
                           "(open_clip.add_model_config) before create_model_and_transforms, or export to a folder.",
                           model.arch)
    else:
        out.mkdir(parents=True, exist_ok=True)
        pp = _open_clip_preprocess(pre)
        pp["size"] = list(pp["size"])
        config = {"model_cfg": model.model_cfg,
                  "preprocess_cfg": {k: list(v) if isinstance(v, tuple) else v for k, v in pp.items()}}
        atomic_write(out / LOCAL_DIR_WEIGHTS[0], lambda tmp: save_file(state, tmp, metadata={"format": "pt"}))
        atomic_write(out / LOCAL_DIR_CONFIG,
                     lambda tmp: Path(tmp).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8"))
        kwargs = {}
    logger.debug("Exported %s to %s", model.name, out)
    return {"path": out, "arch": model.arch, "kwargs": kwargs}


@functools.lru_cache(maxsize=1)
def _builtin_archs() -> frozenset[str]:
    open_clip = _open_clip("architecture list")
    folder = Path(open_clip.__file__).parent / "model_configs"
    return frozenset(p.stem for p in folder.glob("*.json"))


# ---------------------------------------------------------------------------------------------
# Small models for tests
# ---------------------------------------------------------------------------------------------

def small_test_model(kind: str = "vit", *, seed: int = 0) -> OpenCLIPAdapter:
    """A small open_clip model with random weights, built in memory in well under a second.

    Args:
        kind: ``"vit"`` (``open_clip:ravl-test-vit``: 64 px, 8 x 8 patches, 2 blocks of width
            64) or ``"resnet"`` (``open_clip:ravl-test-rn``: 96 px ModifiedResNet, 3 x 3 final map).
        seed: Seed of the weights.
    """
    check_choice(kind, "kind", "small_test_model", ("vit", "resnet"))
    arch = "ravl-test-vit" if kind == "vit" else "ravl-test-rn"
    register_open_clip_config(arch, TEST_CONFIGS[arch])
    return load_open_clip(PREFIX + arch, seed=seed)
