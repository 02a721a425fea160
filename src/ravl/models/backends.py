"""Registry entries for the optional open_clip and Hugging Face backends.

The adapters themselves arrive with a later change; the entries exist now so that
``ravl models`` shows the naming scheme and a clear error explains what is missing.
"""

from __future__ import annotations

from ravl.models.base import register_model
from ravl.utils.optional import require


@register_model("open_clip:", description="open_clip architectures, e.g. open_clip:RN50, open_clip:ViT-B-16",
                extra="open_clip")
def _open_clip(name, checkpoint=None, **kwargs):
    require("open_clip", purpose=f"model {name!r}")
    raise NotImplementedError(
        f"The open_clip adapter is not available in this version of ravl (requested {name!r}). "
        "Use 'tiny' for now.")


@register_model("hf:", description="Hugging Face CLIP from a local folder, e.g. hf:/path/to/clip", extra="hf")
def _hf(name, checkpoint=None, **kwargs):
    require("transformers", purpose=f"model {name!r}")
    raise NotImplementedError(
        f"The Hugging Face adapter is not available in this version of ravl (requested {name!r}). "
        "Use 'tiny' for now.")
