"""Registry of mitigation methods: RaVL and the baselines behind one contract.

A mitigation method is a *builder*: given what every method shares (the training split, its
labels, the class prompts, the region labelling, the recipe) and its own config, it returns a
:class:`MitigationPlan`, the objective :func:`ravl.training.finetune` optimises and, optionally,
the data order of every epoch. :func:`ravl.mitigation.mitigate`, ``ravl mitigate --method`` and
``ravl benchmark mitigate --methods`` all look methods up here, so a method registered by a
user runs everywhere with no other change::

    from dataclasses import dataclass
    from ravl.mitigation import ConfigMixin, MitigationPlan, register_mitigation_method
    from ravl.training import ContrastiveObjective

    @dataclass(frozen=True)
    class HalfLRConfig(ConfigMixin):
        scale: float = 0.5

    @register_mitigation_method("my-method", config=HalfLRConfig, needs_feature=False,
                                description="standard fine-tuning under another name")
    def my_method(ctx, config):
        return MitigationPlan(ContrastiveObjective())

The config dataclass is the method's own knobs (λ, τ, η, ...): its fields become
``ravl mitigate`` options (the flag named in the field's ``metadata["cli"]``, else
``--METHOD-FIELD``), and it is recorded in the checkpoint so a run can be resumed and compared.
Built-in methods (``docs/mitigation.md``): ``standard``, ``upsample``, ``vl-erm``, ``vl-gdro``,
``spurious-aware``, ``cfr``, ``ravl``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any

import numpy as np
import torch

from ravl.exceptions import InvalidParameterError, UnknownNameError
from ravl.mitigation.common import NoConfig
from ravl.training.loop import FinetuneConfig
from ravl.utils.registry import Registry
from ravl.utils.validation import check_choice

__all__ = [
    "TRAINABLE",
    "MitigationMethod",
    "MitigationContext",
    "MitigationPlan",
    "UnknownMitigationMethodError",
    "MITIGATION_METHODS",
    "register_mitigation_method",
    "get_mitigation_method",
    "list_mitigation_methods",
    "describe_mitigation_methods",
]

#: What a method trains: every parameter, or the image tower's final projection only.
TRAINABLE = ("all", "image-projection")


class UnknownMitigationMethodError(UnknownNameError):
    """An unknown mitigation method name was requested."""


@dataclass(frozen=True)
class MitigationMethod:
    """A registered mitigation method.

    Attributes:
        name: The method's name (``ravl mitigate --method NAME``).
        build: ``build(ctx: MitigationContext, config) -> MitigationPlan``.
        config_cls: The frozen dataclass of the method's own knobs (``to_dict`` / ``from_dict``).
        description: One line for ``--help`` and the docs.
        needs_feature: Whether the method needs a discovered feature (the region labelling);
            ``False`` for methods that ignore discovery, like standard fine-tuning.
        trainable: Default of :attr:`~ravl.mitigation.MitigationOptions.trainable`.
    """

    name: str
    build: Callable[[MitigationContext, Any], MitigationPlan]
    config_cls: type = NoConfig
    description: str = ""
    needs_feature: bool = True
    trainable: str = "all"

    def make_config(self, config: Any = None):
        """``config`` as an instance of :attr:`config_cls`: ``None`` (the defaults), an instance, or a
        dict of fields (unknown keys are refused)."""
        if config is None:
            return self.config_cls()
        if isinstance(config, self.config_cls):
            return config
        if isinstance(config, dict):
            known = {f.name for f in fields(self.config_cls)}
            bad = sorted(set(config) - known)
            if bad:
                raise InvalidParameterError(f"Unknown option(s) {bad} for mitigation method {self.name!r}; its "
                                            f"{self.config_cls.__name__} has {sorted(known)}.")
            return self.config_cls(**config)
        raise InvalidParameterError(f"The config of mitigation method {self.name!r} must be a "
                                    f"{self.config_cls.__name__}, a dict of its fields or None. "
                                    f"Got {type(config).__name__}.")


@dataclass
class MitigationContext:
    """What every method's builder receives (built by :func:`ravl.mitigation.mitigate`).

    Attributes:
        train: The training split (a :class:`~ravl.data.RegionDataset`), N images.
        labels: ``[N]`` class id of every training image.
        classes: The C class names, in label-id order.
        templates: The prompt templates of the class text (the classifier discovery judged).
        labelling: The :class:`~ravl.mitigation.labelling.RegionLabelling` of the training split,
            or ``None`` for methods that do not need a feature when discovery found none.
        finetune: The recipe (:class:`~ravl.training.FinetuneConfig`).
        start: ``"init"`` (the original fine-tuning's starting weights) or ``"checkpoint"``.
        region_mode: Region embedding mode for region losses (the labelling's unless given).
        load_audited: Zero-argument callable returning the audited model (loaded once).
        progress: Whether to show progress bars.
        init: With ``start="init"``, the ``load_model`` record of the starting weights (e.g.
            ``{"model": "tiny", "seed": 0}``, or with ``"pretrained"`` / ``"checkpoint"`` for
            weights that were trained before); ``None`` otherwise.
    """

    train: Any
    labels: np.ndarray
    classes: list[str]
    templates: tuple[str, ...]
    labelling: Any
    finetune: FinetuneConfig
    start: str
    region_mode: str
    load_audited: Callable[[], Any]
    progress: bool = True
    init: dict[str, Any] | None = None

    @property
    def from_random_weights(self) -> bool:
        """Whether training starts from freshly initialised weights: ``start="init"`` and the
        ``init`` record names no checkpoint, no pretrained weights and no Hugging Face folder
        (``hf:DIR`` always loads the folder's trained weights). Without a record, ``"init"``
        counts as fresh weights (the built-in models' default)."""
        if self.start != "init":
            return False
        init = self.init or {}
        return not (init.get("checkpoint") or init.get("pretrained") or str(init.get("model", "")).startswith("hf:"))

    def epoch_rng(self, epoch: int, salt: int) -> np.random.Generator:
        """A generator seeded by ``(finetune.seed, epoch, salt)``, for deterministic, resumable data orders."""
        return np.random.default_rng([int(self.finetune.seed), int(epoch), int(salt)])

    def require_labelling(self, method: str):
        """The labelling, or a clear error when the method needs a discovered feature and has none."""
        if self.labelling is None:
            raise InvalidParameterError(f"Mitigation method {method!r} needs a discovered feature (its regions label "
                                        "the training set), but the discovery holds none.")
        return self.labelling


@dataclass
class MitigationPlan:
    """What a method's builder returns.

    Attributes:
        objective: ``objective(model, batch) -> dict`` with a ``"loss"`` entry (see
            :mod:`ravl.mitigation.common`); its ``name`` is recorded in the checkpoint.
        epoch_order: Optional ``epoch_order(epoch) -> LongTensor`` of training positions
            (deterministic in ``epoch``, for exact resumption), e.g. group-balanced upsampling.
        info: JSON-ready values the method resolved and wants recorded (e.g. the warm-up
            epochs it chose, the size of a calibration set).
        from_audited: Train from the audited weights whatever ``start`` says (CFR calibrates
            the ERM model, which is the audited one).
    """

    objective: Any
    epoch_order: Callable[[int], torch.Tensor] | None = None
    info: dict[str, Any] = field(default_factory=dict)
    from_audited: bool = False


#: Every registered mitigation method, in registration order (the benchmark's order).
MITIGATION_METHODS: Registry[MitigationMethod] = Registry(
    "mitigation method", error=UnknownMitigationMethodError,
    hint="New methods are added with ravl.mitigation.register_mitigation_method.")


def register_mitigation_method(name: str, *, config: type | None = None, description: str = "",
                               needs_feature: bool = True, trainable: str = "all", override: bool = False):
    """Decorator registering ``build(ctx, config) -> MitigationPlan`` under ``name``.

    Args:
        name: The method's name.
        config: The frozen dataclass of the method's knobs (``None``: no knobs). Give each
            field ``metadata={"cli": "--flag", "help": "..."}`` to choose its ``ravl mitigate``
            flag and help; unmarked fields get ``--NAME-FIELD``.
        description: One line for ``--help``.
        needs_feature: Whether the method needs a discovered feature.
        trainable: Default parameter set, ``"all"`` or ``"image-projection"``.
        override: Replace an existing registration (otherwise an error).
    """
    config = config or NoConfig
    if not (isinstance(config, type) and is_dataclass(config)):
        raise InvalidParameterError(f"The 'config' parameter of register_mitigation_method must be a dataclass "
                                    f"type. Got {config!r}.")
    check_choice(trainable, "trainable", "register_mitigation_method", TRAINABLE)

    def deco(build: Callable[[MitigationContext, Any], MitigationPlan]):
        if not callable(build):
            raise InvalidParameterError(f"A mitigation method must be callable. Got {build!r}.")
        MITIGATION_METHODS.register(name, MitigationMethod(name, build, config, description, needs_feature, trainable),
                                    description=description, override=override)
        return build

    return deco


def get_mitigation_method(name: str, *, where: str = "") -> MitigationMethod:
    """The :class:`MitigationMethod` registered under ``name`` (unknown: an error with close matches)."""
    return MITIGATION_METHODS.get(name, where=where)


def list_mitigation_methods() -> list[str]:
    """Registered method names, in registration order."""
    return MITIGATION_METHODS.list()


def describe_mitigation_methods() -> dict[str, str]:
    """``{name: description}`` of every registered method."""
    return MITIGATION_METHODS.describe()
