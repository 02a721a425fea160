"""Zero-shot classification with prompt-template ensembles (method.md §1).

The class text embedding is ``t_y = normalize(mean_k normalize(g(template_k(y))))`` and the
probabilities are ``softmax(<e, t_y> / temperature)`` for an L2-normalised image or region
embedding ``e`` (temperature 0.07 as in the reference). The same classifier scores whole images
and regions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ravl.utils.validation import check_choice, check_float

__all__ = [
    "DEFAULT_TEMPLATES",
    "DIGIT_TEMPLATES",
    "ZeroShotResult",
    "class_text_embeddings",
    "zero_shot_classify",
    "read_templates",
]

#: Generic templates used when none are given (a small CLIP-style ensemble; "{}" is the class).
DEFAULT_TEMPLATES: tuple[str, ...] = (
    "{}",
    "a photo of a {}",
    "an image of a {}",
    "a picture showing a {}",
    "the image shows a {}",
    "there is a {} in the image",
)

#: The reference's templates for digit settings.
DIGIT_TEMPLATES: tuple[str, ...] = (
    "a photo of the number {}",
    "the digit {}",
    "an image of a {}",
    "{}",
)


def read_templates(path: str | Path) -> tuple[str, ...]:
    """Read prompt templates from a text file, one per line, each containing ``{}``.

    Blank lines and lines starting with ``#`` are ignored.

    Raises:
        ValueError: When the file has no template or a line lacks the ``{}`` placeholder.
    """
    from ravl.exceptions import DatasetError

    path = Path(path)
    if not path.exists() or path.is_dir():
        raise DatasetError(f"Template file {path} does not exist. Give a text file with one template "
                           "per line, each containing '{}' where the class name goes.")
    out = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if "{}" not in line:
            raise DatasetError(f"{path} line {n}: template {line!r} has no '{{}}' placeholder; "
                               "write e.g. 'a photo of a {}'.")
        out.append(line)
    if not out:
        raise DatasetError(f"{path} holds no template; write one per line, e.g. 'a photo of a {{}}'.")
    return tuple(out)


def _check_templates(templates: Sequence[str] | None) -> tuple[str, ...]:
    templates = DEFAULT_TEMPLATES if templates is None else tuple(templates)
    if not templates:
        raise ValueError("The 'templates' parameter of zero_shot_classify must be a non-empty list of "
                         "strings containing '{}'. Got an empty list instead.")
    for t in templates:
        if not isinstance(t, str) or "{}" not in t:
            raise ValueError(f"Every template must be a string containing '{{}}' (the class name). Got {t!r}.")
    return templates


@torch.no_grad()
def class_text_embeddings(model, classes: Sequence[str], templates: Sequence[str] | None = None
                          ) -> torch.Tensor:
    """Prompt-ensemble class embeddings ``[C, D]`` (unit norm), on the model's device.

    Args:
        model: A :class:`~ravl.models.VisionLanguageModel`.
        classes: C class names, substituted into every template.
        templates: Prompt templates with a ``{}`` placeholder (default :data:`DEFAULT_TEMPLATES`).
    """
    templates = _check_templates(templates)
    if len(classes) == 0:
        raise ValueError("The 'classes' parameter must list at least one class name.")
    was_training = model.module.training
    model.module.eval()
    try:
        texts = [t.format(c) for c in classes for t in templates]
        tokens = model.tokenize(texts).to(model.device)
        emb = torch.nn.functional.normalize(model.encode_text(tokens).float(), dim=-1)
        emb = emb.view(len(classes), len(templates), -1).mean(dim=1)
        return torch.nn.functional.normalize(emb, dim=-1)
    finally:
        model.module.train(was_training)


@dataclass(frozen=True)
class ZeroShotResult:
    """Zero-shot scores for N inputs (images or regions).

    Attributes:
        classes: The C class names, in column order.
        logits: ``[N, C]`` cosine similarities divided by the temperature.
        probabilities: ``[N, C]`` softmax of ``logits``.
        predictions: ``[N]`` index of the most probable class.
        level: ``"image"`` or ``"region"`` (rows in ``dataset.region_table()`` order).
        region_mode: How region embeddings were computed (``None`` for images or embeddings).
    """

    classes: tuple[str, ...]
    logits: np.ndarray
    probabilities: np.ndarray
    predictions: np.ndarray
    level: str = "image"
    region_mode: str | None = None

    def accuracy(self, labels: np.ndarray) -> float:
        """Fraction of rows whose prediction equals ``labels`` (class indices; -1 rows ignored)."""
        labels = np.asarray(labels)
        keep = labels >= 0
        return float((self.predictions[keep] == labels[keep]).mean()) if keep.any() else float("nan")


def zero_shot_classify(model, inputs: Any, classes: Sequence[str], *,
                       templates: Sequence[str] | None = None, temperature: float = 0.07,
                       level: str = "image", region_mode: str | None = None,
                       batch_size: int = 128, progress: bool = True) -> ZeroShotResult:
    """Classify images or regions zero-shot with a prompt-template ensemble.

    Args:
        model: A :class:`~ravl.models.VisionLanguageModel`.
        inputs: A :class:`~ravl.data.RegionDataset`, a list of PIL images, or precomputed
            embeddings ``[N, D]`` (numpy or torch; normalised here).
        classes: C class names.
        templates: Prompt templates (default :data:`DEFAULT_TEMPLATES`).
        temperature: Softmax temperature (0.07 as in the reference).
        level: ``"image"`` scores whole images; ``"region"`` scores every region of a dataset
            (rows follow ``dataset.region_table()``).
        region_mode: Region embedding mode for ``level="region"`` (default
            :data:`ravl.models.regions.DEFAULT_REGION_MODE`).
        batch_size: Images per forward pass.
        progress: Show a progress bar.

    Returns:
        A :class:`ZeroShotResult`.

    Example:
        >>> model = ravl.load_model("tiny")                       # doctest: +SKIP
        >>> res = ravl.zero_shot_classify(model, ds, ds.classes)  # doctest: +SKIP
        >>> res.accuracy(ds.label_indices)                        # doctest: +SKIP
    """
    from ravl.models import regions as R

    temperature = check_float(temperature, "temperature", "zero_shot_classify", low=0, closed="neither")
    check_choice(level, "level", "zero_shot_classify", ("image", "region"))
    mode = None
    if isinstance(inputs, (np.ndarray, torch.Tensor)):
        emb = torch.as_tensor(np.asarray(inputs) if isinstance(inputs, np.ndarray) else inputs).float()
        if emb.ndim != 2:
            raise ValueError(f"Precomputed embeddings must be a 2-d array [N, D]. Got shape {tuple(emb.shape)}.")
    elif level == "region":
        mode = region_mode or R.DEFAULT_REGION_MODE
        emb = torch.from_numpy(R.embed_regions(model, inputs, mode=mode, batch_size=batch_size,
                                               progress=progress))
    else:
        emb = torch.from_numpy(R.embed_images(model, inputs, batch_size=batch_size, progress=progress))
    text = class_text_embeddings(model, list(classes), templates).cpu()
    if emb.shape[1] != text.shape[1]:
        raise ValueError(f"Embedding dimension {emb.shape[1]} does not match the model's text embedding "
                         f"dimension {text.shape[1]}; were the embeddings computed with another model?")
    emb = torch.nn.functional.normalize(emb, dim=-1)
    logits = emb @ text.T / temperature
    probs = torch.softmax(logits, dim=-1)
    return ZeroShotResult(classes=tuple(classes), logits=logits.numpy(), probabilities=probs.numpy(),
                          predictions=probs.argmax(dim=-1).numpy(), level=level, region_mode=mode)
