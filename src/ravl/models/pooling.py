"""Region pooling for real CLIP towers: one backbone pass per image, then per-box pooling.

Shared by the open_clip and Hugging Face adapters (``encode_roi``); pure torch, no backend
imports. Boxes are ``[R, 4]`` rows ``x0, y0, x1, y1`` normalised to ``[0, 1]`` of the *model
input* (after the backend's resize and crop, see :mod:`ravl.models.geometry`), with an
``[R]`` index of the image each box belongs to.

Two poolings:

**Attention pool of a ModifiedResNet** (:func:`attnpool_regions`). Each box is RoIAligned
onto the attention pool's own ``g x g`` grid (``g`` = side of its positional embedding, the
size of the final feature map): bilinear samples (``align_corners=False``, border padding, as
:func:`torch.nn.functional.grid_sample`) at the centres of a ``g x g`` partition of the box.
One sample per bin is what RoIAlign's adaptive sampling ratio ``ceil(box / bins)`` gives for
any box no larger than the image, and for the full-image box it samples exactly the cell
centres, so a full-image box reproduces the image embedding (to float rounding). The
attention pool is then evaluated with only the query it uses (the mean token). RoIAlign is a
linear map ``B`` of the map's cells and keys/values are linear in the features, so keys and
values are projected once per image and the attention runs on the cells through ``B``
(exact); per box that costs a few ``g^2 x h w`` products, not a copy of the ``C``-channel map.

**Region class token of a ViT** (:func:`vit_region_tokens`). In the last ``layers`` blocks a
copy of the class token is run per box whose attention sees only itself and the patches under
the box (the boxes of an image are extra queries of that image's attention, so patch keys and
values are computed once); patch tokens are those of the whole-image pass (so they carry image context, as in
every one-pass region method). A patch's attention logit is offset by ``log`` of the fraction
of the patch the box covers, i.e. a box gets attention mass in proportion to its area in patch
units; boxes smaller than one patch are first grown (about their centre, kept inside the image)
to one patch. With a full-image box every patch has weight 1 and the region token equals the
class token: the region embedding is the image embedding (to float rounding), for any
``layers``. See :mod:`ravl.models.openclip` for the measurement behind running it through
every block by default.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ravl.exceptions import InvalidParameterError

__all__ = [
    "box_patch_weights",
    "roi_align",
    "attnpool_regions",
    "ViTBlock",
    "bilinear_matrix",
    "image_slots",
    "vit_region_tokens",
    "weighted_patch_mean",
    "split_roi_boxes",
    "check_roi_layers",
]


def check_roi_layers(value: int | str | None, caller: str) -> int | None:
    """Validate a ViT ``roi_layers`` option: a block count >= 1, or ``None`` / ``"all"`` for every block."""
    if value is None or value == "all":
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidParameterError(f"The 'roi_layers' parameter of {caller} must be an int >= 1 or 'all' (every "
                                    f"block). Got {value!r} instead.")
    return int(value)


def split_roi_boxes(boxes: torch.Tensor, n_images: int, caller: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Check ``[R, 5]`` rows ``(image_index, x0, y0, x1, y1)``; return ``(index [R] long, boxes [R, 4])``.

    Raises:
        ValueError: For a wrong shape, an image index outside ``[0, n_images)``, non-finite
            coordinates or ``x1 < x0`` / ``y1 < y0``.
    """
    if boxes.ndim != 2 or boxes.shape[1] != 5:
        raise InvalidParameterError(f"{caller}: boxes must be [R, 5] rows (image_index, x0, y0, x1, y1) normalised to "
                                    f"[0, 1]. Got shape {tuple(boxes.shape)}.")
    idx = boxes[:, 0].long()
    xy = boxes[:, 1:]
    if boxes.shape[0]:
        if int(idx.min()) < 0 or int(idx.max()) >= n_images:
            raise InvalidParameterError(f"{caller}: boxes[:, 0] must index the {n_images} image(s) given. "
                                        f"Got values in [{int(idx.min())}, {int(idx.max())}].")
        if not bool(torch.isfinite(xy).all()):
            raise InvalidParameterError(f"{caller}: box coordinates must be finite.")
        if bool((xy[:, 2] < xy[:, 0]).any() or (xy[:, 3] < xy[:, 1]).any()):
            raise InvalidParameterError(f"{caller}: boxes must have x0 <= x1 and y0 <= y1.")
    return idx, xy


def box_patch_weights(boxes: torch.Tensor, grid: tuple[int, int], *, min_cells: float = 1.0) -> torch.Tensor:
    """Fraction of each grid cell covered by each box: ``[R, gh * gw]`` (row-major cells).

    Args:
        boxes: ``[R, 4]`` boxes normalised to ``[0, 1]``.
        grid: ``(gh, gw)`` cells (ViT patches).
        min_cells: Boxes narrower (shorter) than this many cells are grown about their centre
            to it, and shifted to stay inside ``[0, 1]``.

    Returns:
        Weights in ``[0, 1]``; cells fully inside a box get exactly 1, cells it only touches 0
        (coverages within 1e-5 of 0 or 1 are snapped, absorbing float32 rounding of box edges).
    """
    gh, gw = grid
    b = boxes.detach().to(torch.float64).clamp(0, 1)

    def axis(a: torch.Tensor, z: torch.Tensor, n: int) -> torch.Tensor:
        side = torch.clamp(z - a, min=min(min_cells / n, 1.0))
        c = ((a + z) / 2).clamp(side / 2, 1 - side / 2)
        a, z = c - side / 2, c + side / 2
        lo = torch.arange(n, dtype=torch.float64, device=b.device) / n
        hi = (torch.arange(n, dtype=torch.float64, device=b.device) + 1) / n
        cover = (torch.minimum(z[:, None], hi[None]) - torch.maximum(a[:, None], lo[None])).clamp(min=0) * n
        # Boxes come as float32: snap coverages within float32 rounding of 0 or 1 (a box edge on a patch edge).
        cover = torch.where(cover > 1 - 1e-5, torch.ones_like(cover), cover)
        return torch.where(cover < 1e-5, torch.zeros_like(cover), cover)

    wy = axis(b[:, 1], b[:, 3], gh)  # [R, gh]
    wx = axis(b[:, 0], b[:, 2], gw)  # [R, gw]
    return (wy[:, :, None] * wx[:, None, :]).reshape(b.shape[0], gh * gw).to(boxes.dtype)


def roi_align(fmap: torch.Tensor, idx: torch.Tensor, boxes: torch.Tensor, out: tuple[int, int]) -> torch.Tensor:
    """RoIAlign with one bilinear sample per bin: ``[R, C, oh, ow]``.

    Args:
        fmap: Feature maps ``[N, C, h, w]``.
        idx: ``[R]`` image of each box.
        boxes: ``[R, 4]`` boxes normalised to ``[0, 1]`` of the map.
        out: ``(oh, ow)`` bins.

    Bin ``(i, j)`` samples the map at ``(x0 + (j + 0.5) / ow * (x1 - x0), ...)`` with
    ``grid_sample(align_corners=False, padding_mode="border")``; for the full box that is every
    cell centre when ``out`` equals the map size.
    """
    oh, ow = out
    xy = boxes.to(fmap.dtype)
    ty = (torch.arange(oh, device=fmap.device, dtype=fmap.dtype) + 0.5) / oh
    tx = (torch.arange(ow, device=fmap.device, dtype=fmap.dtype) + 0.5) / ow
    ys = xy[:, 1:2] + ty[None] * (xy[:, 3:4] - xy[:, 1:2])   # [R, oh]
    xs = xy[:, 0:1] + tx[None] * (xy[:, 2:3] - xy[:, 0:1])   # [R, ow]
    grid = torch.stack(torch.broadcast_tensors(xs[:, None, :], ys[:, :, None]), dim=-1) * 2 - 1
    return F.grid_sample(fmap[idx], grid, mode="bilinear", padding_mode="border", align_corners=False)


def image_slots(idx: torch.Tensor, n_images: int) -> tuple[torch.Tensor, int]:
    """``(slot [R], rmax)``: each box's rank among the boxes of its image, and the largest count.

    Boxes are laid out per image as ``[N, rmax, ...]`` (``padded[idx, slot] = rows``), so per-box
    work is batched per image without copying an image's features once per box.
    """
    if idx.numel() == 0:
        return idx.new_zeros(0), 0
    counts = torch.bincount(idx, minlength=n_images)
    order = torch.argsort(idx, stable=True)
    starts = torch.cumsum(counts, 0) - counts
    slot = torch.empty_like(idx)
    slot[order] = torch.arange(idx.numel(), device=idx.device) - starts[idx[order]]
    return slot, int(counts.max())


def _pad(rows: torch.Tensor, idx: torch.Tensor, slot: torch.Tensor, n_images: int, rmax: int,
         fill: float = 0.0) -> torch.Tensor:
    out = rows.new_full((n_images, rmax, *rows.shape[1:]), fill)
    out[idx, slot] = rows
    return out


def bilinear_matrix(boxes: torch.Tensor, out: tuple[int, int], size: tuple[int, int]) -> torch.Tensor:
    """The linear map of :func:`roi_align`: ``[R, oh * ow, h * w]`` weights of the map's cells.

    ``roi_align(fmap, idx, boxes, out)[r].flatten(1) == fmap[idx[r]].flatten(1) @ B[r].T``
    (bilinear, ``align_corners=False``, border padding = coordinates clamped to the map).
    """
    oh, ow = out
    h, w = size

    def axis(a: torch.Tensor, z: torch.Tensor, n_out: int, n_in: int) -> torch.Tensor:
        t = (torch.arange(n_out, device=a.device, dtype=a.dtype) + 0.5) / n_out
        pos = ((a[:, None] + t[None] * (z - a)[:, None]) * n_in - 0.5).clamp(0, n_in - 1)   # [R, n_out]
        lo = pos.floor()
        frac = pos - lo
        lo = lo.long()
        hi = (lo + 1).clamp(max=n_in - 1)
        m = a.new_zeros(a.shape[0], n_out, n_in)
        m.scatter_add_(2, lo[..., None], (1 - frac)[..., None])
        m.scatter_add_(2, hi[..., None], frac[..., None])
        return m

    ay = axis(boxes[:, 1], boxes[:, 3], oh, h)   # [R, oh, h]
    ax = axis(boxes[:, 0], boxes[:, 2], ow, w)   # [R, ow, w]
    return torch.einsum("riy,rjx->rijyx", ay, ax).reshape(boxes.shape[0], oh * ow, h * w)


def attnpool_regions(fmap: torch.Tensor, idx: torch.Tensor, boxes: torch.Tensor, *,
                     positional_embedding: torch.Tensor, q_proj: torch.nn.Linear, k_proj: torch.nn.Linear,
                     v_proj: torch.nn.Linear, c_proj: torch.nn.Linear, num_heads: int) -> torch.Tensor:
    """CLIP's ModifiedResNet attention pool evaluated on RoIAligned boxes: ``[R, D]``.

    Equal (up to float rounding) to running the attention pool on ``roi_align(fmap, idx,
    boxes, (g, g))``, where ``g x g + 1`` is the size of ``positional_embedding``. Only the
    query the pool uses (its mean token) is evaluated, and since RoIAlign is linear in the map
    (``roi = B F`` with :func:`bilinear_matrix` ``B``), keys and values are projected once per
    image and the attention is computed on the map's cells: ``q . roi(K)_s = sum_c B[s, c]
    (q . K_c)`` and ``sum_s a_s roi(V)_s = sum_c (a B)_c V_c``. No per-box copy of the map is made.

    Args:
        fmap: Final feature maps ``[N, C, h, w]``.
        idx: ``[R]`` image of each box.
        boxes: ``[R, 4]`` boxes normalised to ``[0, 1]``.
        positional_embedding: ``[g * g + 1, C]`` (token 0 is the mean token's).
        q_proj, k_proj, v_proj, c_proj: The pool's projections.
        num_heads: Attention heads.
    """
    n_pos, c = positional_embedding.shape
    g = math.isqrt(n_pos - 1)
    if g * g != n_pos - 1:
        raise InvalidParameterError(f"The attention pool's positional embedding has {n_pos} rows, not g*g+1.")
    n, c_map, h, w = fmap.shape
    if c_map != c:
        raise InvalidParameterError(f"Feature map has {c_map} channels; the attention pool expects {c}.")
    r = boxes.shape[0]
    if r == 0:
        return fmap.new_zeros(0, c_proj.out_features)
    heads, d = num_heads, c // num_heads
    slot, rmax = image_slots(idx, n)
    cells = fmap.flatten(2).transpose(1, 2)                                       # [N, hw, C]
    keys = F.linear(cells, k_proj.weight).view(n, h * w, heads, d)                # no bias: linear in F
    vals = F.linear(cells, v_proj.weight).view(n, h * w, heads, d)
    pos = positional_embedding.to(fmap.dtype)
    pos_k = F.linear(pos, k_proj.weight, k_proj.bias).view(n_pos, heads, d)       # W p_t + b
    pos_v = F.linear(pos, v_proj.weight, v_proj.bias).view(n_pos, heads, d)
    b = _pad(bilinear_matrix(boxes.to(fmap.dtype), (g, g), (h, w)), idx, slot, n, rmax)  # [N, rmax, g*g, hw]
    mean_b = b.mean(dim=2)                                                        # [N, rmax, hw]
    q = q_proj(torch.bmm(mean_b, cells) + pos[0]).view(n, rmax, heads, d)        # the mean token's query
    qk = torch.einsum("nrhd,nchd->nrhc", q, keys)                                 # q . K per cell
    logits = torch.cat([torch.einsum("nrc,nrhc->nrh", mean_b, qk)[..., None],   # token 0: the mean token
                        torch.einsum("nrsc,nrhc->nrhs", b, qk)], dim=3)           # tokens 1..g*g
    logits = (logits + torch.einsum("nrhd,thd->nrht", q, pos_k)) / math.sqrt(d)
    att = logits.softmax(dim=-1)                                                  # [N, rmax, heads, 1 + g*g]
    cell_w = att[..., :1] * mean_b[:, :, None, :] + torch.einsum("nrhs,nrsc->nrhc", att[..., 1:], b)
    out = torch.einsum("nrhc,nchd->nrhd", cell_w, vals) + torch.einsum("nrht,thd->nrhd", att, pos_v)
    return c_proj(out.reshape(n, rmax, c)[idx, slot])


@dataclass(frozen=True)
class ViTBlock:
    """Functional view of one pre-LN transformer block, ``x + attn(ln_1 x)``, ``x + mlp(ln_2 x)``.

    Attributes:
        ln_1: The attention branch's norm.
        qkv: ``h [..., W] -> (q, k, v)``, each ``[..., W]`` (biases included).
        attn_out: Output projection of the attention (and its layer scale), ``[..., W] -> [..., W]``.
        mlp_branch: The whole MLP residual branch, ``x -> ls_2(mlp(ln_2(x)))``.
        heads: Attention heads.
        forward: The block on all tokens ``[N, T, W] -> [N, T, W]`` (the backend's own module; used
            before the region blocks, which are evaluated from the parts above).
    """

    ln_1: Callable[[torch.Tensor], torch.Tensor]
    qkv: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]
    attn_out: Callable[[torch.Tensor], torch.Tensor]
    mlp_branch: Callable[[torch.Tensor], torch.Tensor]
    heads: int
    forward: Callable[[torch.Tensor], torch.Tensor]


def vit_region_tokens(x: torch.Tensor, blocks: Sequence[ViTBlock], idx: torch.Tensor,
                      weights: torch.Tensor, *, return_hidden: bool = False
                      ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Per-box class tokens after ``blocks``: ``[R, W]`` (before the final norm and projection).

    The boxes of each image are queries of one attention over that image's patch keys plus the
    boxes' own keys (each box sees only its own), with ``log(weight)`` added to the patch
    logits; no per-box copy of the patch keys is made.

    Args:
        x: Hidden states ``[N, 1 + P, W]`` entering ``blocks[0]``; token 0 is the class token.
        blocks: The last blocks of the tower (at least one).
        idx: ``[R]`` image of each box.
        weights: ``[R, P]`` patch weights from :func:`box_patch_weights`.
        return_hidden: Also run the image's own tokens through the last block and return
            ``(region tokens, hidden states [N, 1 + P, W])``, so the image embedding comes from
            the same pass.
    """
    if not blocks:
        raise InvalidParameterError("vit_region_tokens needs at least one block.")
    n, t, width = x.shape
    n_patch = t - 1
    slot, rmax = image_slots(idx, n)
    r_tok = _pad(x[idx, 0], idx, slot, n, rmax)                                   # [N, rmax, W]
    logw = torch.log(weights.to(torch.float32)).to(x.dtype)
    bias = x.new_full((n, rmax, n_patch + rmax), float("-inf"))
    bias[:, :, :n_patch] = _pad(logw, idx, slot, n, rmax, fill=float("-inf"))
    diag = torch.arange(rmax, device=x.device)
    bias[:, diag, n_patch + diag] = 0                                             # each box sees its own token
    bias = bias[:, None]                                                          # [N, 1, rmax, P + rmax]
    for j, blk in enumerate(blocks):
        heads = blk.heads
        d = width // heads
        last = j == len(blocks) - 1 and not return_hidden
        # The image's tokens: the block evaluated from its parts, so their keys and values serve the
        # boxes too (unless asked for, the image's tokens are not needed after the last block).
        q, k, v = blk.qkv(blk.ln_1(x if not last else x[:, 1:]))
        heads_view = lambda t: t.view(n, -1, heads, d).transpose(1, 2)  # noqa: E731
        if not last:
            att = F.scaled_dot_product_attention(heads_view(q), heads_view(k), heads_view(v))
            k, v = k[:, 1:], v[:, 1:]                                             # patch keys for the boxes
        q_r, k_r, v_r = blk.qkv(blk.ln_1(r_tok))                                  # [N, rmax, W]
        att_r = F.scaled_dot_product_attention(heads_view(q_r), heads_view(torch.cat([k, k_r], dim=1)),
                                               heads_view(torch.cat([v, v_r], dim=1)), attn_mask=bias)
        r_tok = r_tok + blk.attn_out(att_r.transpose(1, 2).reshape(n, rmax, width))
        r_tok = r_tok + blk.mlp_branch(r_tok)
        if not last:
            x = x + blk.attn_out(att.transpose(1, 2).reshape(n, t, width))
            x = x + blk.mlp_branch(x)
    return (r_tok[idx, slot], x) if return_hidden else r_tok[idx, slot]


def weighted_patch_mean(tokens: torch.Tensor, idx: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Box-weighted mean of patch tokens: ``[R, W]`` from ``tokens [N, P, W]`` and ``weights [R, P]``."""
    n = tokens.shape[0]
    slot, rmax = image_slots(idx, n)
    w = weights.to(tokens.dtype)
    w = _pad(w / w.sum(dim=1, keepdim=True), idx, slot, n, rmax)                  # [N, rmax, P]
    return torch.bmm(w, tokens)[idx, slot]
