"""``ravl models``: list the registered model names."""

from __future__ import annotations

from ravl.models.base import list_models, model_info


def add_arguments(parser) -> None:
    pass


def run(args) -> int:
    for name in list_models():
        info = model_info(name)
        extra = f"  [needs: pip install 'ravl[{info.extra}]']" if info.extra else ""
        print(f"{info.name:<12} {info.description}{extra}")
    return 0
