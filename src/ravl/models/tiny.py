"""The built-in tiny CLIP: a small CNN image tower and a byte-level text transformer.

It needs nothing beyond torch, trains from scratch on CPU in about a minute on the 56x56
synthetic settings, and exposes a spatial feature map so regions can be pooled from one
backbone pass (``"roi"`` mode). See ``docs/models.md`` for the architecture and measurements.

Architecture (defaults)::

    image [N, 3, 56, 56]
      -> 5 conv blocks (3x3 conv, BatchNorm, ReLU; residual when shape is kept),
         widths 32-48-64-96-96, strides 2-2-1-2-1        -> feature map [N, 96, 7, 7]
      -> global average pool -> LayerNorm -> Linear      -> image embedding [N, 128]
    text tokens [N, 32] (UTF-8 bytes, BOS/EOS/PAD)
      -> byte + position embeddings, 2 causal pre-LN transformer blocks (width 64, 4 heads)
      -> LayerNorm, features at EOS -> Linear            -> text embedding [N, 128]
    logit_scale: learned, initialised to log(1 / 0.07)

Region pooling (:meth:`TinyCLIP.encode_roi`): for every box an ``s x s`` grid of points is
sampled bilinearly (:func:`torch.nn.functional.grid_sample`) at the centres of an even
``s x s`` partition of the box on the final feature map, averaged, and passed through the
same pooling head (LayerNorm, Linear). It is RoIAlign with one output bin and ``s x s``
samples. ``s`` defaults to the feature map size, so a full-image box samples exactly the cell
centres and reproduces :meth:`TinyCLIP.encode_image` (global average pooling) exactly.

BatchNorm, as in the ResNet CLIPs: in eval mode an image's embedding never depends on the
batch it is in. (GroupNorm was tried and collapsed to constant embeddings at the fine-tuning
learning rate, see ``docs/models.md``.) Models come back from the registry in eval mode;
training code calls ``model.module.train()``. There is no dropout.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torch.utils.checkpoint import checkpoint

from ravl.data.dataset import to_rgb
from ravl.exceptions import CheckpointError, InvalidParameterError
from ravl.models.base import register_model
from ravl.models.checkpoint import load_state_dict_checked, read_checkpoint
from ravl.models.tokenizer import PAD_ID, VOCAB_SIZE, ByteTokenizer
from ravl.utils.validation import check_float, check_int

__all__ = ["TinyCLIPConfig", "TinyCLIP", "TinyCLIPAdapter", "build_tiny_clip", "pretrained_tiny_path",
           "PRETRAINED_TINY", "CLIP_MEAN", "CLIP_STD"]

#: Per-channel normalisation of OpenAI CLIP, also used by the tiny CLIP.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

#: Pretrained weights shipped with ravl: tag -> folder under ``ravl/models/pretrained/``.
PRETRAINED_TINY = {"synthetic": "tiny-synthetic-v1"}


@dataclass(frozen=True)
class TinyCLIPConfig:
    """Architecture of :class:`TinyCLIP` (round-trips through JSON with :meth:`to_dict`).

    Attributes:
        image_size: Side of the square input in pixels (images are resized to it).
        conv_widths: Output channels of each 3x3 conv block of the image tower.
        conv_strides: Stride of each conv block (1 or 2); a block with stride 1 and equal
            input/output width is residual. The feature map side is ``image_size`` divided by
            the product of the strides (rounded up).
        embed_dim: D, the joint embedding size.
        text_width: Width of the text transformer.
        text_layers: Number of text transformer blocks.
        text_heads: Attention heads; must divide ``text_width``.
        context_length: T, tokens per text (BOS + UTF-8 bytes + EOS, padded/truncated).
        vocab_size: Token ids (256 bytes + PAD, BOS, EOS).
        lower_case: Whether the tokenizer lower-cases text.
        roi_samples: ``s``, sampling points per box side in ``encode_roi``; ``None`` means the
            feature map side (which makes a full-image box equal ``encode_image``).
        mean: Per-channel mean subtracted by ``preprocess`` (pixels scaled to [0, 1]).
        std: Per-channel standard deviation divided by ``preprocess``.
        init_logit_scale: Initial value of the learned log inverse temperature.
    """

    image_size: int = 56
    conv_widths: tuple[int, ...] = (32, 48, 64, 96, 96)
    conv_strides: tuple[int, ...] = (2, 2, 1, 2, 1)
    embed_dim: int = 128
    text_width: int = 64
    text_layers: int = 2
    text_heads: int = 4
    context_length: int = 32
    vocab_size: int = VOCAB_SIZE
    lower_case: bool = True
    roi_samples: int | None = None
    mean: tuple[float, float, float] = CLIP_MEAN
    std: tuple[float, float, float] = CLIP_STD
    init_logit_scale: float = math.log(1 / 0.07)

    def __post_init__(self) -> None:
        # Lists (e.g. from JSON) become tuples so the config stays hashable and comparable.
        for name in ("conv_widths", "conv_strides", "mean", "std"):
            value = getattr(self, name)
            if isinstance(value, list):
                object.__setattr__(self, name, tuple(value))
        c = "TinyCLIPConfig"
        check_int(self.image_size, "image_size", c, low=8)
        if not isinstance(self.conv_widths, tuple) or not self.conv_widths:
            raise InvalidParameterError(f"The 'conv_widths' parameter of {c} must be a non-empty tuple of ints. "
                                        f"Got {self.conv_widths!r} instead.")
        if not isinstance(self.conv_strides, tuple) or len(self.conv_strides) != len(self.conv_widths):
            raise InvalidParameterError(f"The 'conv_strides' parameter of {c} must be a tuple with one stride per conv "
                                        f"width ({len(self.conv_widths)}). Got {self.conv_strides!r} instead.")
        for w in self.conv_widths:
            check_int(w, "conv_widths[i]", c, low=1)
        for s in self.conv_strides:
            check_int(s, "conv_strides[i]", c, low=1, high=2)
        check_int(self.embed_dim, "embed_dim", c, low=1)
        check_int(self.text_width, "text_width", c, low=1)
        check_int(self.text_layers, "text_layers", c, low=0)
        check_int(self.text_heads, "text_heads", c, low=1)
        if self.text_width % self.text_heads:
            raise InvalidParameterError(f"The 'text_width' parameter of {c} must be divisible by text_heads="
                                        f"{self.text_heads}. Got {self.text_width} instead.")
        check_int(self.context_length, "context_length", c, low=3)
        check_int(self.vocab_size, "vocab_size", c, low=VOCAB_SIZE)
        if self.roi_samples is not None:
            check_int(self.roi_samples, "roi_samples", c, low=1)
        for name in ("mean", "std"):
            value = getattr(self, name)
            if not isinstance(value, tuple) or len(value) != 3:
                raise InvalidParameterError(f"The '{name}' parameter of {c} must be 3 floats (R, G, B). "
                                            f"Got {value!r} instead.")
            for v in value:
                check_float(v, f"{name}[i]", c, low=0 if name == "mean" else 0.0,
                            closed="both" if name == "mean" else "neither")
        check_float(self.init_logit_scale, "init_logit_scale", c)

    @property
    def feature_map_size(self) -> int:
        """Side of the image tower's final feature map."""
        side = self.image_size
        for s in self.conv_strides:
            side = (side + s - 1) // s
        return side

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dict (tuples become lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TinyCLIPConfig":
        """Rebuild from :meth:`to_dict` output.

        Raises:
            ValueError: For keys that are not fields (names them) or invalid values.
        """
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise InvalidParameterError(f"Unknown TinyCLIPConfig field(s) {unknown}; known fields: {sorted(names)}.")
        return cls(**d)


class _ConvBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.norm = nn.BatchNorm2d(c_out)
        self.residual = stride == 1 and c_in == c_out
        nn.init.kaiming_normal_(self.conv.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.norm(self.conv(x)))
        return x + y if self.residual else y


class _TextBlock(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.ln_1 = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.out = nn.Linear(width, width)
        self.ln_2 = nn.LayerNorm(width)
        self.fc = nn.Linear(width, 4 * width)
        self.proj = nn.Linear(4 * width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, w = x.shape
        q, k, v = self.qkv(self.ln_1(x)).view(b, t, 3, self.heads, w // self.heads).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.out(a.transpose(1, 2).reshape(b, t, w))
        return x + self.proj(F.gelu(self.fc(self.ln_2(x))))


class TinyCLIP(nn.Module):
    """The tiny CLIP network (see the module docstring for the architecture).

    Args:
        config: Architecture; default :class:`TinyCLIPConfig()`.

    Attributes:
        config: The architecture.
        logit_scale: Learned log inverse temperature (a parameter; ``exp`` of it scales logits).
    """

    def __init__(self, config: TinyCLIPConfig | None = None):
        super().__init__()
        cfg = config or TinyCLIPConfig()
        self.config = cfg
        blocks, c_in = [], 3
        for c_out, stride in zip(cfg.conv_widths, cfg.conv_strides):
            blocks.append(_ConvBlock(c_in, c_out, stride))
            c_in = c_out
        self.visual = nn.Sequential(*blocks)
        self.visual_norm = nn.LayerNorm(c_in)
        self.visual_proj = nn.Linear(c_in, cfg.embed_dim)

        w = cfg.text_width
        self.token_embedding = nn.Embedding(cfg.vocab_size, w)
        self.positional_embedding = nn.Parameter(torch.empty(cfg.context_length, w))
        self.text_blocks = nn.ModuleList(_TextBlock(w, cfg.text_heads) for _ in range(cfg.text_layers))
        self.text_norm = nn.LayerNorm(w)
        self.text_proj = nn.Linear(w, cfg.embed_dim, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(float(cfg.init_logit_scale)))
        #: Recompute block activations in the backward pass (:meth:`TinyCLIPAdapter.set_grad_checkpointing`).
        self.grad_checkpointing = False

        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)
        for blk in self.text_blocks:
            nn.init.normal_(blk.qkv.weight, std=w ** -0.5)
            nn.init.normal_(blk.out.weight, std=(w ** -0.5) * (2 * max(1, cfg.text_layers)) ** -0.5)
            nn.init.normal_(blk.fc.weight, std=(2 * w) ** -0.5)
            nn.init.normal_(blk.proj.weight, std=(w ** -0.5) * (2 * max(1, cfg.text_layers)) ** -0.5)
        nn.init.normal_(self.text_proj.weight, std=w ** -0.5)

    # -- image tower ---------------------------------------------------------------------------
    def feature_map(self, pixels: torch.Tensor) -> torch.Tensor:
        """Final conv feature map ``[N, C, h, w]`` of preprocessed images ``[N, 3, H, W]``."""
        if pixels.ndim != 4 or pixels.shape[1] != 3:
            raise InvalidParameterError("Expected preprocessed images of shape [N, 3, H, W]. Got "
                                        f"{tuple(pixels.shape)}.")
        # NHWC is markedly faster for these small convolutions on CPU and fine on GPU.
        x = pixels.contiguous(memory_format=torch.channels_last)
        if self.grad_checkpointing and torch.is_grad_enabled():
            for blk in self.visual:
                x = checkpoint(blk, x, use_reentrant=False)
            return x
        return self.visual(x)

    def pool_head(self, pooled: torch.Tensor) -> torch.Tensor:
        """Map pooled features ``[N, C]`` to the embedding space ``[N, D]``."""
        return self.visual_proj(self.visual_norm(pooled))

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        """Image embeddings ``[N, D]`` (not normalised)."""
        return self.pool_head(self.feature_map(pixels).mean(dim=(2, 3)))

    def encode_roi(self, pixels: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        """Region embeddings ``[R, D]`` from one backbone pass over ``pixels`` ``[N, 3, H, W]``.

        Args:
            pixels: Preprocessed images.
            boxes: ``[R, 5]`` rows ``(image_index, x0, y0, x1, y1)`` normalised to [0, 1].
        """
        self._check_boxes(boxes)
        return self._pool_boxes(self.feature_map(pixels), boxes)

    def encode_image_and_roi(self, pixels: torch.Tensor, boxes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(encode_image(pixels), encode_roi(pixels, boxes))`` from **one** backbone pass.

        The forward values equal the two separate calls (in training mode too: BatchNorm
        normalises with the statistics of the same batch ``pixels`` either way). What differs in
        training mode is the BatchNorm *running* statistics: one pass updates them once, the two
        separate calls twice with the same batch statistics (momentum applied twice). Gradients
        are the sum over both uses of the one feature map, as with two passes.
        """
        self._check_boxes(boxes)
        fmap = self.feature_map(pixels)
        return self.pool_head(fmap.mean(dim=(2, 3))), self._pool_boxes(fmap, boxes)

    @staticmethod
    def _check_boxes(boxes: torch.Tensor) -> None:
        if boxes.ndim != 2 or boxes.shape[1] != 5:
            raise InvalidParameterError("boxes must be [R, 5] rows (image_index, x0, y0, x1, y1). Got "
                                        f"{tuple(boxes.shape)}.")

    def _pool_boxes(self, fmap: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        """RoIAlign with one bin (``s x s`` bilinear samples averaged) on ``fmap``, then the pooling head."""
        if boxes.shape[0] == 0:
            return fmap.new_zeros(0, self.config.embed_dim)
        idx = boxes[:, 0].long()
        if int(idx.min()) < 0 or int(idx.max()) >= fmap.shape[0]:
            raise InvalidParameterError(f"boxes[:, 0] must index the {fmap.shape[0]} image(s) given. "
                                        f"Got values in [{int(idx.min())}, {int(idx.max())}].")
        xy = boxes[:, 1:].to(fmap.dtype)
        s_h = self.config.roi_samples or fmap.shape[2]
        s_w = self.config.roi_samples or fmap.shape[3]
        ty = (torch.arange(s_h, device=fmap.device, dtype=fmap.dtype) + 0.5) / s_h
        tx = (torch.arange(s_w, device=fmap.device, dtype=fmap.dtype) + 0.5) / s_w
        ys = xy[:, 1:2] + ty[None] * (xy[:, 3:4] - xy[:, 1:2])     # [R, s_h] in [0, 1]
        xs = xy[:, 0:1] + tx[None] * (xy[:, 2:3] - xy[:, 0:1])     # [R, s_w]
        grid = torch.stack(torch.broadcast_tensors(xs[:, None, :], ys[:, :, None]), dim=-1) * 2 - 1
        sampled = F.grid_sample(fmap[idx], grid, mode="bilinear", padding_mode="border", align_corners=False)
        return self.pool_head(sampled.mean(dim=(2, 3)))

    # -- text tower ----------------------------------------------------------------------------
    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        """Text embeddings ``[N, D]`` (not normalised) of token rows ``[N, T]``.

        The features at each row's last non-padding token (EOS) are projected. Columns after
        the longest row are dropped first; with causal attention this changes nothing but time.
        """
        if tokens.ndim != 2:
            raise InvalidParameterError(f"Expected tokens of shape [N, T]. Got {tuple(tokens.shape)}.")
        if tokens.shape[1] > self.config.context_length:
            raise InvalidParameterError(f"Token rows have {tokens.shape[1]} columns; the model's context length is "
                                        f"{self.config.context_length}. Tokenize with the model's own tokenize().")
        if tokens.shape[0] == 0:
            return self.text_proj.weight.new_zeros(0, self.config.embed_dim)
        tokens = tokens.long()
        pos = torch.arange(tokens.shape[1], device=tokens.device)
        last = torch.where(tokens != PAD_ID, pos, torch.zeros_like(pos)).amax(dim=1)  # [N]
        tokens = tokens[:, :int(last.max()) + 1]
        x = self.token_embedding(tokens) + self.positional_embedding[:tokens.shape[1]]
        for blk in self.text_blocks:
            x = checkpoint(blk, x, use_reentrant=False) if self.grad_checkpointing and torch.is_grad_enabled() \
                else blk(x)
        x = self.text_norm(x[torch.arange(x.shape[0], device=x.device), last])
        return self.text_proj(x)

    def forward(self, pixels: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(encode_image(pixels), encode_text(tokens))``."""
        return self.encode_image(pixels), self.encode_text(tokens)


class TinyCLIPAdapter:
    """:class:`~ravl.models.base.VisionLanguageModel` adapter around :class:`TinyCLIP`.

    Args:
        module: The network.
        name: Registry name recorded in checkpoints (``"tiny"``).

    Example:
        >>> import ravl
        >>> model = ravl.load_model("tiny", seed=0)
        >>> model.encode_text(model.tokenize(["the number is a seven"])).shape
        torch.Size([1, 128])
    """

    #: The image tower's pooling head (LayerNorm + Linear): what "train the projection only" trains.
    image_projection_prefixes = ("visual_norm.", "visual_proj.")
    #: Each tower's parameters (``--freeze image|text``); the logit scale belongs to neither.
    image_tower_prefixes = ("visual.", "visual_norm.", "visual_proj.")
    text_tower_prefixes = ("token_embedding.", "positional_embedding", "text_blocks.", "text_norm.", "text_proj.")
    #: ``encode_image`` takes inputs of any side >= 8 (convolutions, then global average pooling),
    #: e.g. region crops at their own resolution (``RegionAwareConfig.train_region_size``).
    accepts_any_image_size = True

    def __init__(self, module: TinyCLIP, name: str = "tiny"):
        self.name = name
        self.module = module
        cfg = module.config
        self.embed_dim = cfg.embed_dim
        self.image_size = (cfg.image_size, cfg.image_size)
        self.tokenizer = ByteTokenizer(cfg.context_length, lower=cfg.lower_case)
        self._mean = torch.tensor(cfg.mean, dtype=torch.float32).view(1, 3, 1, 1)
        self._std = torch.tensor(cfg.std, dtype=torch.float32).view(1, 3, 1, 1)

    def __repr__(self) -> str:
        n = sum(p.numel() for p in self.module.parameters())
        return f"TinyCLIPAdapter(name={self.name!r}, params={n:,}, device={self.device})"

    def preprocess(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """PIL images of any size and mode -> ``[N, 3, H, W]`` float32 (CPU).

        Each image is converted to RGB, resized to ``image_size`` with bilinear filtering
        (skipped when it already has that size), scaled to [0, 1] and normalised with the
        config's ``mean`` and ``std``.
        """
        if isinstance(images, Image.Image):
            images = [images]
        h, w = self.image_size
        arrays = []
        for k, im in enumerate(images):
            if not isinstance(im, Image.Image):
                raise InvalidParameterError(f"preprocess takes PIL images; item {k} is a {type(im).__name__}.")
            if im.mode != "RGB":
                im = to_rgb(im)
            if im.size != (w, h):
                im = im.resize((w, h), Image.BILINEAR)
            arrays.append(np.asarray(im, dtype=np.uint8))
        if not arrays:
            return torch.empty(0, 3, h, w)
        x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float().div_(255.0)
        return x.sub_(self._mean).div_(self._std).contiguous()

    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        """Byte-level tokens ``[N, context_length]`` (int64, CPU); any unicode text works."""
        return self.tokenizer(texts)

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        """Image embeddings ``[N, D]`` (not normalised)."""
        return self.module.encode_image(pixels)

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        """Text embeddings ``[N, D]`` (not normalised)."""
        return self.module.encode_text(tokens)

    def encode_roi(self, pixels: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        """Region embeddings ``[R, D]`` pooled from one feature-map pass (see :meth:`TinyCLIP.encode_roi`)."""
        return self.module.encode_roi(pixels, boxes)

    def encode_image_and_roi(self, pixels: torch.Tensor, boxes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(encode_image(pixels), encode_roi(pixels, boxes))`` from one feature-map pass
        (:meth:`TinyCLIP.encode_image_and_roi`; RaVL's ``roi`` training step uses it)."""
        return self.module.encode_image_and_roi(pixels, boxes)

    def logit_scale(self) -> torch.Tensor:
        """``exp`` of the learned log inverse temperature (scalar tensor, differentiable)."""
        return self.module.logit_scale.exp()

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block's activations in the backward pass (less memory, more time)."""
        self.module.grad_checkpointing = bool(enable)

    def config(self) -> dict[str, Any]:
        """The :class:`TinyCLIPConfig` as a JSON-serialisable dict."""
        return self.module.config.to_dict()

    def to(self, device: str | torch.device) -> "TinyCLIPAdapter":
        """Move the network to ``device``; returns self."""
        self.module.to(device)
        return self

    @property
    def device(self) -> torch.device:
        """Device of the network's parameters."""
        return self.module.logit_scale.device


def build_tiny_clip(config: TinyCLIPConfig | None = None, *, seed: int = 0, name: str = "tiny") -> TinyCLIPAdapter:
    """A freshly initialised tiny CLIP (in eval mode); the weights depend only on ``seed`` and ``config``.

    The global RNG is forked (:func:`torch.random.fork_rng`), so building a model neither
    depends on nor changes the caller's random state.
    """
    seed = check_int(seed, "seed", "build_tiny_clip", low=0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        module = TinyCLIP(config or TinyCLIPConfig())
    module.eval()
    return TinyCLIPAdapter(module, name=name)


def pretrained_tiny_path(tag: str = "synthetic") -> Path:
    """Folder of the tiny CLIP weights shipped with ravl under ``tag`` (a ravl checkpoint).

    ``"synthetic"``: pretrained on the broad synthetic corpus of :mod:`ravl.data.pretraining`
    (printed digits, every feature and shape in several colours, no object tied to any class),
    built by ``python benchmarks/pretrain_tiny.py`` (docs/benchmarks.md).

    Raises:
        InvalidParameterError: For an unknown tag.
        CheckpointError: When the shipped folder is missing (a broken install).
    """
    if tag not in PRETRAINED_TINY:
        raise InvalidParameterError(f"Unknown pretrained weights {tag!r} for model 'tiny'; choose one of "
                                    f"{sorted(PRETRAINED_TINY)} (or omit --pretrained for fresh seeded weights).")
    path = Path(__file__).resolve().parent / "pretrained" / PRETRAINED_TINY[tag]
    if not (path / "config.json").exists():
        raise CheckpointError(f"The tiny CLIP's {tag!r} weights are missing from the installation ({path}); "
                              "reinstall ravl, or rebuild them with `python benchmarks/pretrain_tiny.py --install`.")
    return path


@register_model("tiny", description="built-in tiny CLIP (CNN + byte-level text transformer, 56x56); "
                                    "trains on CPU in about a minute")
def _tiny_factory(name: str, checkpoint=None, seed: int = 0, pretrained: str | None = None,
                  **config_overrides: Any) -> TinyCLIPAdapter:
    """Registry factory: fresh seeded weights, the shipped pretrained weights, or a ravl checkpoint folder.

    Args:
        name: ``"tiny"``.
        checkpoint: A folder written by :func:`ravl.models.checkpoint.save_checkpoint`.
        seed: Seed of the fresh weights (ignored with a checkpoint or pretrained weights).
        pretrained: ``"synthetic"``: start from the weights shipped with ravl
            (:func:`pretrained_tiny_path`) instead of fresh ones. Not with ``checkpoint``.
        **config_overrides: :class:`TinyCLIPConfig` fields. With a checkpoint they must agree
            with the stored architecture.
    """
    known = sorted(f.name for f in fields(TinyCLIPConfig))
    bad = sorted(set(config_overrides) - set(known))
    if bad:
        raise InvalidParameterError(f"Unknown option(s) {bad} for model 'tiny'; TinyCLIPConfig fields are {known}.")
    if pretrained is not None:
        if checkpoint is not None:
            raise InvalidParameterError("Give the tiny CLIP either a checkpoint or pretrained weights, not both "
                                        f"(got checkpoint={str(checkpoint)!r}, pretrained={pretrained!r}).")
        checkpoint = pretrained_tiny_path(pretrained)
    if checkpoint is None:
        return build_tiny_clip(TinyCLIPConfig(**config_overrides), seed=seed, name=name)

    path, stored, state = read_checkpoint(checkpoint, expect_model=name)
    try:
        cfg = TinyCLIPConfig.from_dict(stored.get("model_config") or {})
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{path / 'config.json'} has an invalid 'model_config' for model 'tiny' ({exc}). "
                              "Re-save the checkpoint with this version of ravl.") from None
    for key, value in config_overrides.items():
        current = getattr(cfg, key)
        if TinyCLIPConfig.from_dict({**cfg.to_dict(), key: value}) != cfg:
            raise InvalidParameterError(f"Option {key}={value!r} conflicts with the checkpoint {path} "
                                        f"({key}={current!r}); the architecture is fixed by the checkpoint. "
                                        "Drop the option or load without a checkpoint.")
    model = build_tiny_clip(cfg, seed=0, name=name)
    load_state_dict_checked(model.module, state, path)
    return model
