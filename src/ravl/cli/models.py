"""``ravl models``: list the registered model names."""

from __future__ import annotations

COMMAND = "models"
HELP = "list the model names load_model accepts"


def add_arguments(parser) -> None:
    pass


def run(args) -> int:
    from ravl.models import list_models

    for info in list_models():
        extra = f"  [needs: pip install 'ravl[{info.extra}]']" if info.extra else ""
        print(f"{info.name:<12} {info.description}{extra}")
    return 0
