"""``ravl mitigate`` / ``ravl benchmark mitigate`` options from the registered mitigation methods.

Every field of a registered method's config dataclass becomes a flag: ``metadata["cli"]`` names
it (``--lam``), else ``--METHOD-FIELD``; the type comes from the annotation (``int | None``
accepts ``none``, tuples are repeatable flags), ``metadata["help"]`` and ``metadata["choices"]``
are used when present. A method registered by a user gets its flags with no change here.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from typing import Any

from ravl.exceptions import InvalidParameterError
from ravl.mitigation.registry import get_mitigation_method, list_mitigation_methods

__all__ = ["add_method_arguments", "method_configs_from_args", "method_option_flags"]


def _field_flag(method: str, f) -> str:
    return f.metadata.get("cli") or f"--{method}-{f.name}".replace("_", "-")


def _field_kind(cls, f) -> tuple[Any, bool, bool]:
    """``(argparse type, optional: accepts 'none', repeatable)`` of a config field."""
    hint = typing.get_type_hints(cls).get(f.name, str)
    args = typing.get_args(hint)
    optional = type(None) in args
    if optional:
        hint = next(a for a in args if a is not type(None))
    origin = typing.get_origin(hint)
    if origin in (tuple, list):
        return (typing.get_args(hint) or (str,))[0], optional, True
    return (hint if hint in (int, float, str, bool) else str), optional, False


def _parse_value(kind, optional: bool, flag: str):
    def parse(text: str):
        if optional and text.strip().lower() == "none":
            return None
        if kind is bool:
            low = text.strip().lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            raise argparse.ArgumentTypeError(f"{flag} takes true or false; got {text!r}")
        try:
            return kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{flag} takes a {kind.__name__}{' or none' if optional else ''}; "
                                             f"got {text!r}") from None
    parse.__name__ = kind.__name__
    return parse


def method_option_flags() -> dict[str, list[tuple[str, str, str]]]:
    """``{flag: [(method, field, dest), ...]}`` for every field of every registered method's config."""
    flags: dict[str, list[tuple[str, str, str]]] = {}
    for name in list_mitigation_methods():
        cls = get_mitigation_method(name).config_cls
        for f in dataclasses.fields(cls):
            flag = _field_flag(name, f)
            flags.setdefault(flag, []).append((name, f.name, "method_opt_" + flag.lstrip("-").replace("-", "_")))
    return flags


def add_method_arguments(parser: argparse.ArgumentParser) -> None:
    """One argument group per registered mitigation method, with a flag per field of its config.

    Flags default to "not given" (the config's own default applies); a flag declared by several
    methods (same ``metadata["cli"]``) sets the field of each of them.
    """
    seen: set[str] = set()
    for name in list_mitigation_methods():
        spec = get_mitigation_method(name)
        fields_ = dataclasses.fields(spec.config_cls)
        if not fields_:
            continue
        g = parser.add_argument_group(f"options of method '{name}'", spec.description or None)
        for f in fields_:
            flag = _field_flag(name, f)
            if flag in seen:
                continue
            seen.add(flag)
            kind, optional, repeat = _field_kind(spec.config_cls, f)
            default = f.default if f.default is not dataclasses.MISSING else (
                f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
            shown = "none" if default is None else (", ".join(map(str, default)) or "none") if repeat else default
            text = f.metadata.get("help", f.name.replace("_", " "))
            if "default" not in text:
                text += f" (default: {shown})"
            if repeat:
                text += "; repeatable"
            # SUPPRESS: an absent flag leaves no attribute, so the config's own default applies
            kw: dict[str, Any] = {"dest": "method_opt_" + flag.lstrip("-").replace("-", "_"),
                                  "default": argparse.SUPPRESS, "help": text.replace("%", "%%"),
                                  "type": _parse_value(kind, optional, flag),
                                  "metavar": {int: "INT", float: "FLOAT", bool: "BOOL"}.get(kind, "TEXT")}
            if repeat:
                kw["action"] = "append"
            if f.metadata.get("choices"):
                kw["choices"] = list(f.metadata["choices"])
                kw.pop("type")
                kw.pop("metavar")
            g.add_argument(flag, **kw)


def method_configs_from_args(args, methods: list[str]) -> dict[str, dict[str, Any]]:
    """The config fields given on the command line, per method of ``methods``.

    Raises:
        InvalidParameterError: A flag given that belongs to none of ``methods``.
    """
    out: dict[str, dict[str, Any]] = {}
    for flag, owners in method_option_flags().items():
        value = getattr(args, owners[0][2], None)
        if value is None:
            continue
        used = [(m, field) for m, field, _ in owners if m in methods]
        if not used:
            raise InvalidParameterError(f"{flag} is an option of method(s) {', '.join(m for m, _, _ in owners)}, "
                                        f"which this command does not run ({', '.join(methods)}).")
        for m, field in used:
            out.setdefault(m, {})[field] = tuple(value) if isinstance(value, list) else value
    return out
