"""``decorrelate``: fine-tuning on synthesised pairs that break an object's co-occurrence.

After Kim, Koepke, Schmid and Akata (CVPR-W 2023, "Exposing and Mitigating Spurious Correlations
for Cross-Modal Retrieval"), who fine-tune retrieval models on synthetic data where object
co-occurrence is broken; reconstructed here from the paper's abstract (their code was not
available), not from their recipe.

Every step synthesises, from the batch's own images (:mod:`ravl.data.manipulation`, on the stored
images, before preprocessing; a ``fraction`` of them, drawn per step):

* **removed**: images showing the object with its region(s) filled from the surroundings, paired
  with their captions without the object's mention;
* **pasted** (only with ``object``, which names the empty regions): images without the object with
  a crop of it pasted into an empty region (from a training image that shows it, drawn
  deterministically from the batch), paired with captions that now name it.

``mix="joint"`` (default): one CLIP loss over the batch's pairs **and** the synthesised ones
together, each row of the loss weighted 1, ``remove_weight`` or ``paste_weight``. A removed image
then has its own original caption (which names the object) as a negative, and the original image
its edited caption: the contrast that teaches the object's presence apart from its companions.
``mix="separate"``: ``clip(batch) + remove_weight * clip(removed) + paste_weight * clip(pasted)``;
every removed pair lacks the object and every pasted pair shows it, so neither synthesised batch
has a pair that differs in the object: they train the other content only (kept to compare;
docs/retrieval.md, "Why the first version did not work").

The object is a region attribute of the training rows (``object``, ground truth, as the paper uses
annotations), or, when ``object`` is not given, the discovered feature: the regions the region
labelling marks spurious (then captions stay as they are and nothing is pasted).

Measured on the tiny CLIP and the co-occurrence settings in docs/retrieval.md, "Measured".
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ravl.data.attributes import EMPTY_ATTRIBUTE
from ravl.data.manipulation import FILL_METHODS, add_mention, object_words, paste_object, remove_mention, remove_object
from ravl.exceptions import InvalidParameterError
from ravl.mitigation.common import ConfigMixin
from ravl.mitigation.registry import MitigationContext, MitigationPlan, register_mitigation_method
from ravl.models.regions import unmap_boxes
from ravl.training.loop import ContrastiveObjective
from ravl.training.losses import clip_loss
from ravl.utils.validation import check_choice, check_float

#: How the synthesised pairs meet the batch's (module docstring).
MIX_MODES = ("joint", "separate")
#: Stored images kept in memory by one objective (the removed ones are deterministic too).
_IMAGE_CACHE = 50_000

__all__ = ["MIX_MODES", "DecorrelateConfig", "DecorrelateObjective", "weighted_clip_loss"]


@dataclass(frozen=True)
class DecorrelateConfig(ConfigMixin):
    """Knobs of ``decorrelate``.

    Attributes:
        object: Region attribute of the object to decorrelate (e.g. ``"ring"``); ``None``: the
            discovered feature's regions.
        remove_weight: Weight of the removed-object pairs' loss.
        paste_weight: Weight of the pasted-object pairs' loss (needs ``object``).
        fill: How a removed region is filled: ``"ring"`` or ``"diffuse"``.
        mix: ``"joint"``: one contrastive batch of the original and the synthesised pairs;
            ``"separate"``: a loss of its own for each synthesised batch (module docstring).
        fraction: Fraction of the batch's eligible images synthesised at each step, in (0, 1].

    The defaults (joint, 0.5, weights 1, ring) were chosen on the validation split of the
    co-occurrence setting (docs/retrieval.md, "Measured").
    """

    object: str | None = field(default=None, metadata={"cli": "--decorrelate-object", "help": (
        "region attribute of the object to decorrelate (default: the discovered feature's regions)")})
    remove_weight: float = field(default=1.0, metadata={"help": "weight of the removed-object pairs' loss"})
    paste_weight: float = field(default=1.0, metadata={"help": "weight of the pasted-object pairs' loss"})
    fill: str = field(default="ring", metadata={"help": "fill of a removed region: ring or diffuse",
                                                "choices": FILL_METHODS})
    mix: str = field(default="joint", metadata={"choices": MIX_MODES, "help": (
        "joint: the synthesised pairs join the batch's contrastive loss (each is a hard negative of its "
        "original); separate: a loss of their own")})
    fraction: float = field(default=0.5, metadata={"help": (
        "fraction of the batch's images synthesised at each step, in (0, 1]")})

    def __post_init__(self) -> None:
        c = "DecorrelateConfig"
        if self.object is not None and (not isinstance(self.object, str) or not self.object.strip()):
            raise InvalidParameterError(f"The 'object' parameter of {c} must be a region attribute name or None. Got "
                                        f"{self.object!r}.")
        check_float(self.remove_weight, "remove_weight", c, low=0.0)
        check_float(self.paste_weight, "paste_weight", c, low=0.0)
        check_choice(self.fill, "fill", c, FILL_METHODS)
        check_choice(self.mix, "mix", c, MIX_MODES)
        check_float(self.fraction, "fraction", c, low=0.0, high=1.0, closed="right")


class DecorrelateObjective(ContrastiveObjective):
    """CLIP loss of the batch with its object-removed and object-pasted versions (module docstring).

    Args:
        train: The training :class:`~ravl.data.RegionDataset` (positions = ``batch["indices"]``).
        remove: ``{position: [pixel box, ...]}`` of the regions to remove.
        removed_caption: ``{position: caption}`` paired with the removed image.
        paste: ``{position: [empty pixel box, ...]}`` of the images that may receive the object.
        pasted_caption: ``{position: caption}`` paired with the pasted image.
        donors: ``[(position, pixel box), ...]`` object crops to paste.
        config: The :class:`DecorrelateConfig`.
        seed: Seeds the donor and region draws (with the batch's positions).
    """

    name = "decorrelate"

    def __init__(self, train, remove, removed_caption, paste, pasted_caption, donors, config: DecorrelateConfig,
                 seed: int = 0):
        self.train = train
        self.remove, self.removed_caption = remove, removed_caption
        self.paste, self.pasted_caption, self.donors = paste, pasted_caption, donors
        self.config = config
        self.seed = int(seed)
        self._images: dict[int, Any] = {}
        self._removed_images: dict[int, Any] = {}

    def _image(self, i: int):
        img = self._images.get(i)
        if img is None:
            img = self.train.load_image(i)
            if len(self._images) < _IMAGE_CACHE:
                self._images[i] = img
        return img

    def _removed(self, i: int):
        img = self._removed_images.get(i)
        if img is None:
            img = self._image(i)
            for box in self.remove[i]:
                img = remove_object(img, box, method=self.config.fill)
            if len(self._removed_images) < _IMAGE_CACHE:
                self._removed_images[i] = img
        return img

    def synthesise(self, indices: list[int]) -> dict[str, list]:
        """The synthesised pairs of a batch of dataset positions (deterministic in the positions).

        Returns:
            ``{"removed": [(position, image, caption), ...], "pasted": [...]}``.
        """
        rng = np.random.default_rng([self.seed, *indices])
        cfg = self.config
        keep = rng.random(len(indices)) < cfg.fraction if cfg.fraction < 1 else np.ones(len(indices), dtype=bool)
        removed, pasted = [], []
        for i, take in zip(indices, keep):
            if cfg.remove_weight and i in self.remove and take:
                removed.append((i, self._removed(i), self.removed_caption[i]))
            if cfg.paste_weight and i in self.paste and self.donors and take:
                j, d_box = self.donors[int(rng.integers(len(self.donors)))]
                boxes = self.paste[i]
                box = boxes[int(rng.integers(len(boxes)))]
                pasted.append((i, paste_object(self._image(i), self._image(j), d_box, box), self.pasted_caption[i]))
        return {"removed": removed, "pasted": pasted}

    def _encode(self, model, pairs, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        px = model.preprocess([p[1] for p in pairs]).to(like.device)
        tok = model.tokenize([p[2] for p in pairs]).to(like.device)
        return model.encode_image(px), model.encode_text(tok)

    def _pairs_loss(self, model, pairs, like: torch.Tensor) -> torch.Tensor:
        if len(pairs) < 2:  # one pair has no negative: nothing to contrast
            return like.new_zeros(())
        img, txt = self._encode(model, pairs, like)
        return clip_loss(img, txt, model.logit_scale())["loss"]

    def __call__(self, model, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        idx = [int(i) for i in (batch["indices"].tolist() if torch.is_tensor(batch["indices"])
                                else batch["indices"])]
        syn = self.synthesise(idx)
        cfg = self.config
        counts = {"n_removed": float(len(syn["removed"])), "n_pasted": float(len(syn["pasted"]))}
        if cfg.mix == "separate":
            base = super().__call__(model, batch)
            loss = base["loss"]
            removed = self._pairs_loss(model, syn["removed"], loss)
            pasted = self._pairs_loss(model, syn["pasted"], loss)
            total = loss + cfg.remove_weight * removed + cfg.paste_weight * pasted
            return {"loss": total, "clip": loss.detach(), "removed": removed.detach(), "pasted": pasted.detach(),
                    **{k: loss.new_tensor(v) for k, v in counts.items()}}
        img = model.encode_image(batch["pixels"])
        txt = model.encode_text(batch["tokens"])
        weights = [1.0] * len(idx)
        pairs = syn["removed"] + syn["pasted"]
        if pairs:
            s_img, s_txt = self._encode(model, pairs, img)
            img, txt = torch.cat([img, s_img.to(img.dtype)]), torch.cat([txt, s_txt.to(txt.dtype)])
            weights += [cfg.remove_weight] * len(syn["removed"]) + [cfg.paste_weight] * len(syn["pasted"])
        out = weighted_clip_loss(img, txt, model.logit_scale(), img.new_tensor(weights))
        n = len(idx)
        with torch.no_grad():  # the standard loss of the batch's own pairs, to compare runs
            plain = clip_loss(img[:n], txt[:n], model.logit_scale())["loss"]
        return {"loss": out["loss"], "clip": plain.detach(), "joint": out["loss"].detach(),
                **{k: out["loss"].new_tensor(v) for k, v in counts.items()}}


def weighted_clip_loss(image_embeddings: torch.Tensor, text_embeddings: torch.Tensor,
                       logit_scale: torch.Tensor | float, weights: torch.Tensor) -> dict[str, torch.Tensor]:
    """Symmetric InfoNCE over N pairs whose rows (image->text and text->image) are weighted.

    Every pair is a negative of every other; pair i's two cross-entropy terms count ``weights[i]``
    in the weighted means. With all weights equal it is :func:`ravl.training.losses.clip_loss`.

    Args:
        image_embeddings: ``[N, D]`` (normalised here).
        text_embeddings: ``[N, D]`` (normalised here); row i is the caption of image i.
        logit_scale: Inverse temperature (already exponentiated).
        weights: ``[N]`` non-negative, not all zero.

    Returns:
        ``{"loss", "image_to_text", "text_to_image"}``.
    """
    img = torch.nn.functional.normalize(image_embeddings, dim=-1)
    txt = torch.nn.functional.normalize(text_embeddings, dim=-1)
    logits = logit_scale * img @ txt.T
    target = torch.arange(len(img), device=img.device)
    w = weights.to(logits.dtype)
    i2t = (torch.nn.functional.cross_entropy(logits, target, reduction="none") * w).sum() / w.sum()
    t2i = (torch.nn.functional.cross_entropy(logits.T, target, reduction="none") * w).sum() / w.sum()
    return {"loss": (i2t + t2i) / 2, "image_to_text": i2t, "text_to_image": t2i}


def _plan_ground_truth(train, obj: str) -> dict[str, Any]:
    words = object_words(obj)
    missing = [r for r in train if r.region_attributes is None]
    if missing:
        raise InvalidParameterError(f"decorrelate --decorrelate-object {obj!r} needs 'region_attributes' on every "
                                    f"training row; {missing[0].file_name} has none. Leave the object out to use the "
                                    "discovered feature instead.")
    remove, removed_caption, paste, pasted_caption, donors = {}, {}, {}, {}, []
    for r in train:
        attrs = r.region_attributes
        caption = r.caption or ""
        if obj in attrs:
            remove[r.index] = [list(b) for b, a in zip(r.boxes, attrs) if a == obj]
            removed_caption[r.index] = remove_mention(caption, words)
            donors.extend((r.index, list(b)) for b, a in zip(r.boxes, attrs) if a == obj)
        elif EMPTY_ATTRIBUTE in attrs:
            paste[r.index] = [list(b) for b, a in zip(r.boxes, attrs) if a == EMPTY_ATTRIBUTE]
            pasted_caption[r.index] = add_mention(caption, obj)
    if not remove:
        known = sorted({a for r in train for a in r.region_attributes} - {EMPTY_ATTRIBUTE})
        raise InvalidParameterError(f"decorrelate: no training image has a region {obj!r}; the region attributes are "
                                    f"{', '.join(map(repr, known[:20]))}.")
    return {"remove": remove, "removed_caption": removed_caption, "paste": paste, "pasted_caption": pasted_caption,
            "donors": donors}


def _plan_discovered(train, labelling, model) -> dict[str, Any]:
    rl = labelling.region_labels
    remove: dict[int, list[list[float]]] = {}
    for i, box, spurious in zip(np.asarray(rl.image_index), np.asarray(rl.boxes_norm, dtype=np.float64),
                                np.asarray(rl.is_spurious)):
        if spurious:
            r = train[int(i)]
            # labelled boxes are in the model's input; back to pixels of the image (through its crop)
            remove.setdefault(int(i), []).append(unmap_boxes(model, box, (r.width, r.height))[0].tolist())
    return {"remove": remove, "removed_caption": {i: train[i].caption or "" for i in remove}, "paste": {},
            "pasted_caption": {}, "donors": []}


@register_mitigation_method("decorrelate", config=DecorrelateConfig, needs_feature=False,
                            description="fine-tuning plus synthesised pairs that break an object's co-occurrence: its "
                                        "regions removed (captions without it) and pasted (captions naming it)")
def decorrelate_method(ctx: MitigationContext, config: DecorrelateConfig) -> MitigationPlan:
    """The decorrelating objective over ``ctx.train`` (module docstring)."""
    if config.object is not None:
        parts = _plan_ground_truth(ctx.train, config.object)
        source = f"region attribute {config.object!r}"
    else:
        parts = _plan_discovered(ctx.train, ctx.require_labelling("decorrelate"), ctx.load_audited())
        source = "discovered feature regions"
    objective = DecorrelateObjective(ctx.train, config=config, seed=ctx.finetune.seed, **parts)
    info = {"object_source": source, "n_remove_images": len(parts["remove"]), "n_paste_images": len(parts["paste"]),
            "n_donors": len(parts["donors"])}
    return MitigationPlan(objective, info=info)
