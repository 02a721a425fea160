"""Zero-shot classification with prompt-template ensembles (docs/algorithm.md §1).

The class text embedding is ``t_y = normalize(mean_k normalize(g(template_k(y))))`` and the
probabilities are ``softmax(<e, t_y> / temperature)`` for an L2-normalised image or region
embedding ``e`` (temperature 0.07 as in the reference). The same classifier scores whole images
and regions.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ravl.exceptions import DatasetError, InvalidParameterError
from ravl.models.regions import DEFAULT_REGION_MODE, embed_images, embed_regions
from ravl.utils.validation import check_choice, check_float

__all__ = [
    "DEFAULT_TEMPLATES",
    "DIGIT_TEMPLATES",
    "IMAGENET_TEMPLATES",
    "TEMPLATE_SETS",
    "default_templates",
    "templates_from_spec",
    "ZeroShotResult",
    "check_templates",
    "template_problem",
    "prompt_tokens",
    "prompt_embeddings",
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


#: An ImageNet-style ensemble for pretrained CLIPs: the seven templates CLIP's authors selected for
#: ImageNet zero-shot classification (their prompt-engineering notebook), plus the plain "a photo
#: of a {}.".
IMAGENET_TEMPLATES: tuple[str, ...] = (
    "a photo of a {}.",
    "itap of a {}.",
    "a bad photo of the {}.",
    "a origami {}.",
    "a photo of the large {}.",
    "a {} in a video game.",
    "art of the {}.",
    "a photo of the small {}.",
)

#: Named template sets (``--templates NAME``). ``"auto"`` is resolved per model and classes by
#: :func:`default_templates`.
TEMPLATE_SETS: dict[str, tuple[str, ...]] = {
    "generic": DEFAULT_TEMPLATES,
    "digits": DIGIT_TEMPLATES,
    "imagenet": IMAGENET_TEMPLATES,
}

_DIGIT_NAMES = frozenset("zero one two three four five six seven eight nine".split()) | frozenset("0123456789")


def default_templates(model: Any = None, classes: Sequence[str] | None = None) -> tuple[str, ...]:
    """The templates used when none are given, recorded or mined.

    An adapter of a pretrained CLIP (open_clip, Hugging Face) sets ``default_template_set =
    "auto"``: the reference's digit templates when every class is a digit name (the synthetic
    settings), the ImageNet-style set otherwise. Adapters without it (the tiny CLIP, which learns
    its vocabulary from the fine-tuning captions) get :data:`DEFAULT_TEMPLATES`.

    Example:
        >>> default_templates(None, ["cat", "dog"]) == DEFAULT_TEMPLATES
        True
        >>> class Pretrained:
        ...     default_template_set = "auto"
        >>> default_templates(Pretrained(), ["three", "nine"]) == DIGIT_TEMPLATES
        True
        >>> default_templates(Pretrained(), ["cat", "dog"]) == IMAGENET_TEMPLATES
        True
    """
    name = getattr(model, "default_template_set", None) or "generic"
    if name == "auto":
        digits = bool(classes) and all(str(c).strip().lower() in _DIGIT_NAMES for c in classes)
        name = "digits" if digits else "imagenet"
    if name not in TEMPLATE_SETS:
        raise InvalidParameterError(f"{getattr(model, 'name', type(model).__name__)}.default_template_set is {name!r}; "
                                    f"use 'auto' or one of {sorted(TEMPLATE_SETS)}.")
    return TEMPLATE_SETS[name]


def templates_from_spec(spec: str | os.PathLike) -> tuple[str, ...]:
    """``--templates``: a named set (:data:`TEMPLATE_SETS`: generic, digits, imagenet) or a text
    file with one template per line (:func:`read_templates`). A file of that name wins over a set.

    Example:
        >>> templates_from_spec("digits") == DIGIT_TEMPLATES
        True
    """
    text = os.fspath(spec)
    if text in TEMPLATE_SETS and not Path(text).exists():
        return TEMPLATE_SETS[text]
    return read_templates(text)


def template_problem(template: str) -> str | None:
    """Why ``template`` is not a usable prompt template (``None`` when it is).

    A template holds exactly one ``{}`` (where the class name goes) and no other brace, so that
    ``template.format(name)`` gives the prompt.

    Example:
        >>> template_problem("a photo of a {}") is None
        True
        >>> template_problem("a {} next to a {}")
        "has 2 '{}' placeholders; write exactly one, where the class name goes"
    """
    if not isinstance(template, str):
        return f"is a {type(template).__name__}, not a string"
    n = template.count("{}")
    if n == 0:
        return "has no '{}' placeholder; write e.g. 'a photo of a {}'"
    if n > 1:
        return f"has {n} '{{}}' placeholders; write exactly one, where the class name goes"
    if template.replace("{}", "").count("{") or template.replace("{}", "").count("}"):
        return "has a brace besides its '{}' placeholder; remove it ('{' and '}' are reserved)"
    return None


def read_templates(path: str | Path) -> tuple[str, ...]:
    """Read prompt templates from a text file, one per line, each containing ``{}``.

    Blank lines and lines starting with ``#`` are ignored.

    Raises:
        DatasetError: When the file is missing or holds no template, or a line is not a template
            (see :func:`template_problem`; the message names the line).
    """
    path = Path(path)
    if not path.exists() or path.is_dir():
        raise DatasetError(f"Template file {path} does not exist. Give a text file with one template "
                           "per line, each containing '{}' where the class name goes.")
    out = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        why = template_problem(line)
        if why:
            raise DatasetError(f"{path} line {n}: template {line!r} {why}.")
        out.append(line)
    if not out:
        raise DatasetError(f"{path} holds no template; write one per line, e.g. 'a photo of a {{}}'.")
    return tuple(out)


def check_templates(templates: Sequence[str] | None, caller: str = "zero_shot_classify", *, model: Any = None,
                    classes: Sequence[str] | None = None) -> tuple[str, ...]:
    """``templates`` as a tuple (``None``: :func:`default_templates` of ``model`` and
    ``classes``), each a string with ``{}``.

    Raises:
        InvalidParameterError: An empty list, or a template without the ``{}`` placeholder.
    """
    if templates is None:
        return default_templates(model, classes)
    if isinstance(templates, str) or not isinstance(templates, Sequence):
        raise InvalidParameterError(f"The 'templates' parameter of {caller} must be a list of strings containing "
                                    f"'{{}}'. Got {templates!r} instead.")
    templates = tuple(templates)
    if not templates:
        raise InvalidParameterError(f"The 'templates' parameter of {caller} must be a non-empty list of strings "
                                    "containing '{}'. Got an empty list instead.")
    for t in templates:
        why = template_problem(t)
        if why:
            raise InvalidParameterError(f"Every template must be a string containing '{{}}' (the class name) once, "
                                        f"e.g. 'a photo of a {{}}'. The template {t!r} {why}.")
    return templates


def _check_names(names: Sequence[str], caller: str) -> tuple[str, ...]:
    if isinstance(names, str) or not isinstance(names, Sequence) or not len(names):
        raise InvalidParameterError(f"The 'classes' parameter of {caller} must list at least one class name. "
                                    f"Got {names!r} instead.")
    for n in names:
        if not isinstance(n, str) or not n:
            raise InvalidParameterError(f"The 'classes' parameter of {caller} must hold non-empty strings. "
                                        f"Got {n!r}.")
    return tuple(names)


def prompt_tokens(model, names: Sequence[str], templates: Sequence[str]) -> torch.Tensor:
    """Tokens ``[N * K, T]`` of every ``template.format(name)``, name-major (CPU)."""
    return model.tokenize([t.format(n) for n in names for t in templates])


def prompt_embeddings(model, names: Sequence[str], templates: Sequence[str] | None = None, *,
                      tokens: torch.Tensor | None = None) -> torch.Tensor:
    """Unit-norm text embeddings of every ``template.format(name)``: ``[N, K, D]``.

    Differentiable: gradients flow when the caller has them enabled (the mitigation losses train
    the text tower through this). float16 / bfloat16 outputs are promoted to float32.

    Args:
        model: A :class:`~ravl.models.VisionLanguageModel`.
        names: N names (classes or attributes).
        templates: K templates with a ``{}`` placeholder (default: :func:`default_templates`).
        tokens: Precomputed :func:`prompt_tokens` of the same names and templates (a cache).
    """
    names = _check_names(names, "prompt_embeddings")
    templates = check_templates(templates, "prompt_embeddings", model=model, classes=names)
    if tokens is None:
        tokens = prompt_tokens(model, names, templates)
    emb = model.encode_text(tokens.to(model.device))
    emb = F.normalize(emb if emb.dtype in (torch.float32, torch.float64) else emb.float(), dim=-1)
    return emb.view(len(names), len(templates), -1)


def class_text_embeddings(model, classes: Sequence[str], templates: Sequence[str] | None = None, *,
                          grad: bool = False, tokens: torch.Tensor | None = None) -> torch.Tensor:
    """The zero-shot classifier: prompt-ensemble class embeddings ``[C, D]`` (unit norm).

    ``t_c = normalize(mean_k normalize(g(template_k(c))))`` on the model's device. This is the
    one implementation of the class text in ravl: zero-shot scoring, discovery, evaluation and
    every mitigation loss use it.

    Args:
        model: A :class:`~ravl.models.VisionLanguageModel`.
        classes: C class names, substituted into every template.
        templates: Prompt templates with a ``{}`` placeholder (default: :func:`default_templates`).
        grad: ``False`` (scoring): computed without gradients, with the model in eval mode
            (restored afterwards), as float32. ``True`` (training): differentiable, the module's
            mode untouched.
        tokens: Precomputed :func:`prompt_tokens` (a cache for training loops).
    """
    if grad:
        return F.normalize(prompt_embeddings(model, classes, templates, tokens=tokens).mean(dim=1), dim=-1)
    was_training = model.module.training
    model.module.eval()
    try:
        with torch.no_grad():
            emb = prompt_embeddings(model, classes, templates, tokens=tokens).mean(dim=1)
            return F.normalize(emb, dim=-1).float()
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
        templates: Prompt templates (default: :func:`default_templates`).
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
    temperature = check_float(temperature, "temperature", "zero_shot_classify", low=0, closed="neither")
    check_choice(level, "level", "zero_shot_classify", ("image", "region"))
    mode = None
    if isinstance(inputs, (np.ndarray, torch.Tensor)):
        emb = torch.as_tensor(np.asarray(inputs) if isinstance(inputs, np.ndarray) else inputs).float()
        if emb.ndim != 2:
            raise InvalidParameterError("Precomputed embeddings must be a 2-d array [N, D]. Got shape "
                                        f"{tuple(emb.shape)}.")
    elif level == "region":
        mode = region_mode or DEFAULT_REGION_MODE
        emb = torch.from_numpy(embed_regions(model, inputs, mode=mode, batch_size=batch_size,
                                               progress=progress))
    else:
        emb = torch.from_numpy(embed_images(model, inputs, batch_size=batch_size, progress=progress))
    text = class_text_embeddings(model, list(classes), templates).cpu()
    if emb.shape[1] != text.shape[1]:
        raise InvalidParameterError(f"Embedding dimension {emb.shape[1]} does not match the model's text embedding "
                                    f"dimension {text.shape[1]}; were the embeddings computed with another model?")
    emb = torch.nn.functional.normalize(emb, dim=-1)
    logits = emb @ text.T / temperature
    probs = torch.softmax(logits, dim=-1)
    return ZeroShotResult(classes=tuple(classes), logits=logits.numpy(), probabilities=probs.numpy(),
                          predictions=probs.argmax(dim=-1).numpy(), level=level, region_mode=mode)
