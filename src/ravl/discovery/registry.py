"""Registry of discovery methods: RaVL, its ablations and the baselines, behind one signature.

A discovery method is a callable ``fn(inputs, *, random_state=0, **kwargs) -> DiscoveryResult``
taking a :class:`~ravl.discovery.pipeline.DiscoveryInputs`. The benchmark and ``ravl discover
--method NAME`` look methods up here, so a method registered by a user is benchmarked with no
change to the harness::

    from ravl.discovery.registry import register_discovery_method

    @register_discovery_method("my_method", description="regions most like class 0")
    def my_method(inputs, *, random_state=0):
        ranked = (-inputs.region_probabilities[:, 0]).argsort()
        return result_from_ranking(inputs, [{"regions": ranked}], "my_method")

Built-in names (``docs/baselines.md``): ``ravl``, ``ravl_gap_only``, ``ravl_influence_only``,
``ravl_unweighted``, ``random``, and for each of ``distilling_failures``, ``george``,
``domino``, ``spurious_aware``: the bare name (adaptation A, image-then-region) and
``NAME_region`` (adaptation B, region-as-sample). Keyword arguments given at call time
override the registered defaults (e.g. ``get_discovery_method("george")(inputs,
n_components=25)``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import ravl.discovery.baselines as baselines
from ravl.discovery.pipeline import discover_on_inputs
from ravl.exceptions import InvalidParameterError, UnknownNameError
from ravl.utils.registry import Registry

__all__ = [
    "RAVL_METHODS",
    "DISCOVERY_METHODS",
    "UnknownDiscoveryMethodError",
    "DiscoveryMethod",
    "register_discovery_method",
    "get_discovery_method",
    "list_discovery_methods",
    "describe_discovery_methods",
    "discovery_method_info",
]


#: The built-in names that run RaVL itself (they accept :class:`~ravl.discovery.DiscoveryConfig` keywords).
RAVL_METHODS = ("ravl", "ravl_gap_only", "ravl_influence_only", "ravl_unweighted")


class UnknownDiscoveryMethodError(UnknownNameError):
    """An unknown discovery method name was requested."""


@dataclass(frozen=True)
class DiscoveryMethod:
    """A registered method: its name, the callable and a one-line description."""

    name: str
    fn: Callable[..., Any]
    description: str = ""
    defaults: dict[str, Any] = field(default_factory=dict)


#: Every registered discovery method, in registration order.
DISCOVERY_METHODS: Registry[DiscoveryMethod] = Registry(
    "discovery method", error=UnknownDiscoveryMethodError,
    hint="New methods are added with ravl.discovery.registry.register_discovery_method.")


def register_discovery_method(name: str, fn: Callable[..., Any] | None = None, *, description: str = "",
                              override: bool = False, **defaults: Any):
    """Register a discovery method under ``name`` (as a decorator or a plain call).

    Args:
        name: The method's name (``ravl discover --method NAME``, benchmark ``--methods``).
        fn: ``fn(inputs, *, random_state=0, **kwargs) -> DiscoveryResult``; omit to use as a
            decorator.
        description: One line shown by :func:`describe_discovery_methods` and the CLI.
        override: Replace an existing registration (otherwise an error).
        **defaults: Keyword arguments bound to ``fn`` for this name (call-time keywords win).

    Returns:
        ``fn`` unchanged (decorator use: the decorator).

    Raises:
        InvalidParameterError: Empty name, a name already registered without ``override``, or
            ``fn`` not callable.
    """

    def deco(f: Callable[..., Any]) -> Callable[..., Any]:
        if not callable(f):
            raise InvalidParameterError(f"The 'fn' parameter of register_discovery_method must be callable. "
                                        f"Got {f!r} instead.")
        DISCOVERY_METHODS.register(name, DiscoveryMethod(name, f, description, dict(defaults)),
                                   description=description, override=override)
        return f

    return deco if fn is None else deco(fn)


def discovery_method_info(name: str) -> DiscoveryMethod:
    """The :class:`DiscoveryMethod` registered under ``name`` (unknown: error with close matches)."""
    return DISCOVERY_METHODS.get(name)


def get_discovery_method(name: str) -> Callable[..., Any]:
    """The callable ``fn(inputs, *, random_state=0, **kwargs) -> DiscoveryResult`` for ``name``.

    Raises:
        UnknownDiscoveryMethodError: ``name`` is not registered (a ``KeyError``); the message lists
            the registered names and suggests close matches.
    """
    m = discovery_method_info(name)
    if not m.defaults:
        return m.fn

    @functools.wraps(m.fn)
    def bound(inputs, *, random_state: Any = 0, **kwargs: Any):
        return m.fn(inputs, random_state=random_state, **{**m.defaults, **kwargs})

    return bound


def list_discovery_methods() -> list[str]:
    """Registered names, in registration order."""
    return DISCOVERY_METHODS.list()


def describe_discovery_methods() -> dict[str, str]:
    """``{name: description}`` of every registered method."""
    return DISCOVERY_METHODS.describe()


# --------------------------------------------------------------------------------------------
# built-in methods


def _ravl(scoring: str) -> Callable[..., Any]:
    def run(inputs, *, random_state: Any = 0, progress: bool = False, **kwargs: Any):
        return discover_on_inputs(inputs, scoring=scoring, random_state=random_state, progress=progress, **kwargs)

    run.__name__ = f"ravl_{scoring}"
    run.__doc__ = (f"RaVL discovery with scoring={scoring!r} (:func:`ravl.discover` on the inputs; keywords "
                   "go to it).")
    return run


def _baseline(attr: str) -> Callable[..., Any]:
    def run(inputs, *, random_state: Any = 0, **kwargs: Any):
        return getattr(baselines, attr)(inputs, random_state=random_state, **kwargs)

    run.__name__ = attr
    run.__doc__ = f"See :func:`ravl.discovery.baselines.{attr}`."
    return run


def _register_builtins() -> None:
    for name, scoring, desc in [
            ("ravl", "ravl", "RaVL: region clusters, spurious pattern and influence >= 0.25, ranked by gap"),
            ("ravl_gap_only", "gap_only", "RaVL ablation: spurious-pattern filter, ranked by gap, no influence"),
            ("ravl_influence_only", "influence_only", "RaVL ablation: influence filter and ranking, no gap"),
            ("ravl_unweighted", "unweighted", "RaVL ablation: class gaps without the balance weight")]:
        register_discovery_method(name, _ravl(scoring), description=desc)
    register_discovery_method("random", _baseline("random_baseline"),
                              description="Random: a uniform permutation of all regions")
    for attr, desc in [
            ("distilling_failures", "Distilling Failures (Jain et al. 2023): per-class linear SVM, correct vs wrong"),
            ("george", "George (Sohoni et al. 2020): per-class UMAP + GMM, worst cluster by summed loss"),
            ("domino", "Domino (Eyuboglu et al. 2022): error-aware mixture, slice by max(p_hat - p)"),
            ("spurious_aware", "Spurious-Aware Detection (Yang et al. 2023): attribute MI with error, by acc gap")]:
        register_discovery_method(attr, _baseline(attr), adaptation="image",
                                  description=desc + " [A: image-then-region]")
        register_discovery_method(f"{attr}_region", _baseline(attr), adaptation="region",
                                  description=desc + " [B: region-as-sample]")


_register_builtins()
