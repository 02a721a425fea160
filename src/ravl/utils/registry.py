"""One registry helper behind every name ravl looks up: models, discovery methods, mitigation
methods and synthetic features.

The rules are the same everywhere:

- registering a name that is taken raises, unless ``override=True``;
- looking up an unknown name raises the registry's :class:`~ravl.exceptions.UnknownNameError`
  subclass, with the registered names and the closest matches in the message;
- :meth:`Registry.list` returns names (in registration order), :meth:`Registry.describe` a
  ``{name: description}`` dict.

A registry may accept *prefixes*: names ending in ``":"`` (``"open_clip:"``) match every name
that starts with them (``"open_clip:RN50"``), exact names winning over prefixes.

Example:
    >>> from ravl.utils.registry import Registry
    >>> colours = Registry("colour")
    >>> colours.register("red", (255, 0, 0), description="pure red")
    (255, 0, 0)
    >>> colours.get("red")
    (255, 0, 0)
    >>> colours.list(), colours.describe()
    (['red'], {'red': 'pure red'})
    >>> colours.get("rde")
    Traceback (most recent call last):
    ...
    ravl.exceptions.UnknownNameError: Unknown colour 'rde'. Did you mean 'red'? Registered: red.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from ravl.exceptions import InvalidParameterError, UnknownNameError

__all__ = ["Registry", "RegistryEntry"]

T = TypeVar("T")


@dataclass(frozen=True)
class RegistryEntry(Generic[T]):
    """One registered name: the object and its one-line description."""

    name: str
    obj: T
    description: str = ""


class Registry(Generic[T]):
    """Names -> objects, with one rule for duplicates and one unknown-name error.

    Args:
        kind: What the registry holds, singular, for messages (``"model"``,
            ``"discovery method"``).
        error: The :class:`~ravl.exceptions.UnknownNameError` subclass raised for unknown names.
        prefixes: Whether names ending in ``":"`` match longer names.
        hint: Extra sentence appended to the unknown-name message.
    """

    def __init__(self, kind: str, *, error: type[UnknownNameError] = UnknownNameError, prefixes: bool = False,
                 hint: str = ""):
        self.kind = kind
        self.error = error
        self.prefixes = prefixes
        self.hint = hint
        self._entries: dict[str, RegistryEntry[T]] = {}

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {len(self._entries)} names)"

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self._find(name) is not None

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._entries))

    def __len__(self) -> int:
        return len(self._entries)

    def register(self, name: str, obj: T, *, description: str = "", override: bool = False) -> T:
        """Register ``obj`` under ``name``; returns ``obj``.

        Raises:
            InvalidParameterError: Empty name, or a name already registered without ``override``.
        """
        if not isinstance(name, str) or not name.strip():
            raise InvalidParameterError(f"A {self.kind} name must be a non-empty string. Got {name!r} instead.")
        if name in self._entries and not override:
            raise InvalidParameterError(f"A {self.kind} named {name!r} is already registered; pass override=True "
                                        "to replace it, or choose another name.")
        self._entries[name] = RegistryEntry(name, obj, description)
        return obj

    def decorator(self, name: str, *, description: str = "", override: bool = False,
                  wrap: Callable[[Any], T] | None = None) -> Callable[[Any], Any]:
        """A decorator registering the decorated object (or ``wrap(obj)``) and returning it unchanged."""

        def deco(fn: Any) -> Any:
            self.register(name, wrap(fn) if wrap else fn, description=description, override=override)
            return fn

        return deco

    def unregister(self, name: str) -> None:
        """Remove ``name`` (unknown names raise)."""
        self.entry(name)
        self._entries.pop(name, None)

    def _find(self, name: str) -> RegistryEntry[T] | None:
        entry = self._entries.get(name)
        if entry is None and self.prefixes:
            for key, val in self._entries.items():
                if key.endswith(":") and name.startswith(key):
                    return val
        return entry

    def entry(self, name: str, *, where: str = "") -> RegistryEntry[T]:
        """The :class:`RegistryEntry` for ``name`` (a prefix match when the registry has prefixes).

        Args:
            name: The name to look up.
            where: Where the name came from, for the message (e.g. ``"the 'feature' parameter
                of make_spurious_benchmark"`` or ``"--method"``).

        Raises:
            UnknownNameError: The registry's error class, listing names and close matches.
        """
        entry = self._find(name) if isinstance(name, str) else None
        if entry is None:
            raise self.unknown(name, where=where)
        return entry

    def get(self, name: str, *, where: str = "") -> T:
        """The object registered under ``name`` (see :meth:`entry`)."""
        return self.entry(name, where=where).obj

    def unknown(self, name: Any, *, where: str = "") -> UnknownNameError:
        """The error for an unknown ``name`` (for callers that check names themselves)."""
        names = list(self._entries)
        close = difflib.get_close_matches(str(name), names, n=3, cutoff=0.4)
        hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
        extra = f" {self.hint}" if self.hint else ""
        src = f" ({where})" if where else ""
        return self.error(f"Unknown {self.kind} {name!r}{src}.{hint} Registered: {', '.join(names)}.{extra}")

    def list(self) -> list[str]:
        """Registered names, in registration order."""
        return list(self._entries)

    def describe(self) -> dict[str, str]:
        """``{name: description}`` in registration order."""
        return {n: e.description for n, e in self._entries.items()}
