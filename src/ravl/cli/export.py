"""``ravl export``: write a ravl checkpoint in its backend's own format (open_clip, Hugging Face)."""

from __future__ import annotations

from pathlib import Path

from ravl.cli._common import add_device_argument
from ravl.exceptions import InvalidParameterError
from ravl.models.base import export_model
from ravl.models.checkpoint import read_checkpoint_config

DESCRIPTION = ("write a ravl checkpoint (e.g. the output of `ravl mitigate`) in its backend's own format: for an "
               "open_clip model a weights file open_clip.create_model_and_transforms(ARCH, pretrained=FILE) loads "
               "(.safetensors, .pt, .pth, .bin) or, for any other --out, an open_clip local-dir folder "
               "('local-dir:FOLDER'); for a Hugging Face model a save_pretrained folder from_pretrained loads.")


def add_arguments(parser) -> None:
    parser.add_argument("--checkpoint", required=True, help="ravl checkpoint folder (model.safetensors + config.json)")
    parser.add_argument("--out", required=True,
                        help="open_clip: FILE.safetensors / .pt, or a folder; Hugging Face: a folder")
    add_device_argument(parser)


def run(args) -> int:
    name = read_checkpoint_config(args.checkpoint)["model"]
    out = Path(args.out)
    if out.exists() and out.is_file() and not out.suffix:
        raise InvalidParameterError(f"--out {out} is a file; give a folder or a weights file name.")
    res = export_model(args.checkpoint, out, device=args.device)
    print(f"exported {name} from {args.checkpoint} to {res['path']}")
    for line in res.get("how_to_load", ()):
        print(f"  {line}")
    return 0
