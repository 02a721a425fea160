"""Registry entries for the optional open_clip and Hugging Face backends.

The adapters live in :mod:`ravl.models.openclip` and :mod:`ravl.models.hf`; both import their
library (open_clip / transformers) only when a model is built, so ``import ravl`` and
``ravl.list_models()`` never import a backend. A missing backend raises
:class:`~ravl.exceptions.MissingDependencyError` with the ``pip install 'ravl[...]'`` hint.

Each entry also names a zero-argument ``test_instance`` (a small model of the backend, random
weights, built in memory) for the shared adapter contract battery.
"""

from __future__ import annotations

import inspect
from typing import Any

from ravl.exceptions import InvalidParameterError
from ravl.models.base import register_model
from ravl.utils.optional import require

__all__ = ["open_clip_test_instance", "hf_test_instance"]


def open_clip_test_instance():
    """A small open_clip ViT (``open_clip:ravl-test-vit``, 64 px, 2 blocks), random weights."""
    from ravl.models.openclip import small_test_model

    return small_test_model("vit")


def hf_test_instance():
    """A small Hugging Face ``CLIPModel`` saved to a temporary folder and loaded as ``hf:DIR``."""
    from ravl.models.hf import small_test_model

    return small_test_model()


def _check_options(name: str, fn, kwargs: dict[str, Any]) -> None:
    known = sorted(p.name for p in inspect.signature(fn).parameters.values() if p.kind is p.KEYWORD_ONLY)
    bad = sorted(set(kwargs) - set(known))
    if bad:
        raise InvalidParameterError(f"Unknown option(s) {bad} for model {name!r}; options are {known}.")


@register_model("open_clip:", description="open_clip architectures, e.g. open_clip:RN50, open_clip:ViT-B-16 "
                                     "(weights: checkpoint=FILE or DIR, or pretrained=TAG from open_clip's cache)",
                extra="open-clip", test_instance=open_clip_test_instance)
def _open_clip(name: str, checkpoint=None, **kwargs: Any):
    """Registry factory of ``open_clip:ARCH`` (see :func:`ravl.models.openclip.load_open_clip`)."""
    require("open_clip", purpose=f"model {name!r}")
    from ravl.models.openclip import load_open_clip

    _check_options(name, load_open_clip, kwargs)
    return load_open_clip(name, checkpoint, **kwargs)


@register_model("hf:", description="Hugging Face CLIPModel / SiglipModel saved with save_pretrained, e.g. hf:/path/to/clip",
                extra="hf", test_instance=hf_test_instance)
def _hf(name: str, checkpoint=None, **kwargs: Any):
    """Registry factory of ``hf:DIR`` (see :func:`ravl.models.hf.load_hf`)."""
    require("transformers", purpose=f"model {name!r}")
    from ravl.models.hf import load_hf

    _check_options(name, load_hf, kwargs)
    return load_hf(name, checkpoint, **kwargs)
