"""Prompt templates mined from captions: the phrasings a fine-tuned model actually saw.

Zero-shot classification (:mod:`ravl.zeroshot`) turns each class name into prompts with templates
like ``"a photo of a {}"``. A model fine-tuned on captions such as "a dog catching a frisbee"
may be better served by templates phrased like its captions. :func:`templates_from_captions`
finds them: in each caption it replaces its image's label by ``{}`` and counts the phrasings.

Rules:

- **Matching**: case-insensitive, whole words (a label never matches inside another word:
  ``"cat"`` does not match ``"category"``); a label of several words matches with any run of
  white space between them (``"teddy bear"`` matches ``"teddy  bear"``).
- **Variants**: the label also matches with a plural ending, ``s`` or ``es`` (``"dogs"``,
  ``"buses"``); the ending stays outside the placeholder, so "two dogs on a bed" gives
  ``"two {}s on a bed"``, which formats back to "two dogs on a bed" for ``dog`` (and to "two cats
  on a bed" for ``cat``). Irregular plurals (``person``/``people``) do not match.
- **Exactly once**: a caption is used only when its label (any variant) occurs exactly once;
  captions without it, or with it several times, are skipped (and counted).
- **Normalisation**: the phrasing is lower-cased, its white space collapsed and a final ``.``,
  ``!`` or ``;`` dropped, so "A dog on a couch." and "a dog on a couch" count as one phrasing.
  Captions with ``{`` or ``}`` are skipped (they would break ``str.format``).
- **Selection**: phrasings with at least ``min_count`` occurrences, the most frequent first
  (ties in alphabetical order), at most ``max_templates``.

The result is a :class:`CaptionTemplates`: a tuple of template strings (pass it wherever
templates are expected) that also carries the counts and, when it is empty, the reason.

Example:
    >>> t = templates_from_captions(["A dog on a couch.", "a cat on a couch", "two dogs playing",
    ...                              "a cat and a cat"], ["dog", "cat", "dog", "cat"], min_count=2)
    >>> tuple(t), t.counts
    (('a {} on a couch',), (2,))
"""

from __future__ import annotations

import logging
import os
import re
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from ravl.exceptions import InvalidParameterError
from ravl.utils.io import atomic_write_text
from ravl.utils.validation import check_int

__all__ = ["CaptionTemplates", "templates_from_captions", "templates_from_dataset", "write_templates"]

logger = logging.getLogger(__name__)

_PLURAL_ENDINGS = ("es", "s")
_TRAILING = ".!;"


class CaptionTemplates(tuple):
    """Templates mined from captions: a tuple of strings with the statistics behind it.

    Attributes:
        counts: Occurrences of each template, in the same order.
        reason: Why the tuple is empty (None when it is not).
        n_captions: Captions examined.
        n_used: Captions whose label occurred exactly once (the phrasings counted).
        n_without_label: Captions that do not contain their label.
        n_repeated_label: Captions that contain it more than once.
    """

    counts: tuple[int, ...]
    reason: str | None
    n_captions: int
    n_used: int
    n_without_label: int
    n_repeated_label: int

    def __new__(cls, templates: Sequence[str], counts: Sequence[int], *, reason: str | None, n_captions: int,
                n_used: int, n_without_label: int, n_repeated_label: int) -> CaptionTemplates:
        self = super().__new__(cls, templates)
        self.counts = tuple(counts)
        self.reason = reason
        self.n_captions = n_captions
        self.n_used = n_used
        self.n_without_label = n_without_label
        self.n_repeated_label = n_repeated_label
        return self

    def __getnewargs_ex__(self):  # pickling keeps the statistics
        return (tuple(self), self.counts), {"reason": self.reason, "n_captions": self.n_captions,
                                             "n_used": self.n_used, "n_without_label": self.n_without_label,
                                             "n_repeated_label": self.n_repeated_label}


def _label_pattern(label: str) -> re.Pattern[str]:
    words = [re.escape(w) for w in label.split()]
    body = r"\s+".join(words)
    ending = "|".join(_PLURAL_ENDINGS)
    return re.compile(rf"(?<!\w)({body})(?:{ending})?(?!\w)", re.IGNORECASE)


def _normalise(text: str) -> str:
    text = " ".join(text.lower().split())
    return text.rstrip(_TRAILING).rstrip()


def templates_from_captions(captions: Sequence[str], labels: Sequence[str], *, min_count: int = 3,
                            max_templates: int = 10) -> CaptionTemplates:
    """The most frequent caption phrasings, with the label replaced by ``{}``.

    Args:
        captions: ``[M]`` captions.
        labels: ``[M]`` the class name of each caption's image (the text to replace).
        min_count: Least number of captions a phrasing needs.
        max_templates: Most templates returned.

    Returns:
        A :class:`CaptionTemplates` (a tuple of templates, each with one ``{}``), most frequent
        first; empty, with ``reason`` set, when no phrasing qualifies.

    Raises:
        ValueError: When the lengths differ, an item is not a string, or a count is below 1.
    """
    caller = "templates_from_captions"
    min_count = check_int(min_count, "min_count", caller, low=1)
    max_templates = check_int(max_templates, "max_templates", caller, low=1)
    captions, labels = list(captions), list(labels)
    if len(captions) != len(labels):
        raise InvalidParameterError(f"{caller} needs one label per caption: {len(captions)} captions, {len(labels)} "
                                    "labels.")
    for name, values in (("captions", captions), ("labels", labels)):
        bad = [v for v in values if not isinstance(v, str)]
        if bad:
            raise InvalidParameterError(f"The '{name}' parameter of {caller} must hold strings. Got {bad[0]!r} "
                                        "instead.")
    patterns: dict[str, re.Pattern[str]] = {}
    phrasings: Counter[str] = Counter()
    n_without = n_repeated = n_braces = 0
    for cap, label in zip(captions, labels):
        if not label.strip():
            n_without += 1
            continue
        if "{" in cap or "}" in cap:
            n_braces += 1
            continue
        pat = patterns.get(label)
        if pat is None:
            pat = patterns[label] = _label_pattern(label)
        hits = list(pat.finditer(cap))
        if not hits:
            n_without += 1
            continue
        if len(hits) > 1:
            n_repeated += 1
            continue
        m = hits[0]
        template = _normalise(cap[:m.start()] + "{}" + cap[m.end(1):])
        phrasings[template] += 1
    n_used = sum(phrasings.values())
    ranked = sorted(phrasings.items(), key=lambda kv: (-kv[1], kv[0]))
    chosen = [(t, n) for t, n in ranked if n >= min_count][:max_templates]
    reason = None
    if not captions:
        reason = "no caption was given"
    elif not n_used:
        reason = (f"no caption names its label exactly once ({len(captions)} caption(s): {n_without} without the "
                  f"label, {n_repeated} with it several times" + (f", {n_braces} with braces" if n_braces else "")
                  + ")")
    elif not chosen:
        best_t, best_n = ranked[0]
        reason = (f"no phrasing occurs at least min_count={min_count} times among the {n_used} caption(s) that name "
                  f"their label once (the most frequent, {best_t!r}, occurs {best_n} time(s)); lower min_count or "
                  "give more captions")
    if reason:
        logger.info("No template from captions: %s.", reason)
    return CaptionTemplates([t for t, _ in chosen], [n for _, n in chosen], reason=reason, n_captions=len(captions),
                            n_used=n_used, n_without_label=n_without, n_repeated_label=n_repeated)


def templates_from_dataset(dataset, *, min_count: int = 3, max_templates: int = 10) -> CaptionTemplates:
    """:func:`templates_from_captions` on the rows of a dataset that have both a caption and a label.

    Args:
        dataset: A :class:`~ravl.data.RegionDataset`.
        min_count: See :func:`templates_from_captions`.
        max_templates: See :func:`templates_from_captions`.
    """
    pairs = [(r.caption, r.label) for r in dataset.records if r.caption is not None and r.label is not None]
    return templates_from_captions([c for c, _ in pairs], [lab for _, lab in pairs], min_count=min_count,
                                   max_templates=max_templates)


def write_templates(path: str | os.PathLike, templates: Sequence[str]) -> Path:
    """Atomically write templates one per line, readable by :func:`ravl.zeroshot.read_templates`.

    With a :class:`CaptionTemplates`, a ``#`` comment line before each template records its count.

    Raises:
        ValueError: When there is no template or one lacks ``{}``.
    """
    counts = getattr(templates, "counts", None)
    reason = getattr(templates, "reason", None)
    items = list(templates)
    if not items:
        raise InvalidParameterError("write_templates needs at least one template" + (f" ({reason})" if reason else "") + ".")
    bad = next((t for t in items if not isinstance(t, str) or "{}" not in t or "\n" in t), None)
    if bad is not None:
        raise InvalidParameterError(f"Every template must be one line containing '{{}}'. Got {bad!r}.")
    lines = ["# prompt templates" + (" mined from captions" if counts is not None else "") + " ({} = the class name)"]
    for k, t in enumerate(items):
        if counts is not None:
            lines.append(f"# {counts[k]} caption(s)")
        lines.append(t)
    return atomic_write_text(path, "\n".join(lines) + "\n")
