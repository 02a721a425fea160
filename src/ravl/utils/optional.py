"""Optional backends are imported only inside the branch that needs them."""

from __future__ import annotations

import importlib
from types import ModuleType

from ravl.exceptions import MissingDependencyError

__all__ = ["require"]

# Module -> pip extra (extra names as pip normalises them, PEP 685).
_EXTRAS = {
    "open_clip": "open-clip",
    "transformers": "hf",
    "ray": "ray",
    "torchvision": "open-clip",
    "umap": "umap",
}


def require(module: str, *, extra: str | None = None, purpose: str = "") -> ModuleType:
    """Import and return ``module`` or raise :class:`MissingDependencyError` with an install hint."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        extra = extra or _EXTRAS.get(module.split(".")[0])
        hint = f"pip install 'ravl[{extra}]'" if extra else f"pip install {module.split('.')[0]}"
        why = f" for {purpose}" if purpose else ""
        raise MissingDependencyError(
            f"The optional dependency '{module}' is needed{why} but could not be imported ({exc}). "
            f"Install it with: {hint}") from exc
