"""The contract every registered mitigation method must meet, as one callable check.

Like scikit-learn's ``check_estimator``: :func:`check_mitigation_method` runs a registered method
through :func:`~ravl.mitigation.mitigate` on a small setting the caller supplies and checks what
every method owes its users. ravl's test suite runs it over every registered method; run it on
your own method after registering it::

    from ravl.mitigation.checks import check_mitigation_method
    check_mitigation_method("my-method", checkpoint=ck, train=train_ds, discovery="discovery.json",
                            work_dir="/tmp/check")
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path
from typing import Any

import torch

from ravl.exceptions import RavlError
from ravl.mitigation.api import MitigationResult, mitigate
from ravl.mitigation.registry import MitigationMethod, get_mitigation_method
from ravl.models.base import load_model
from ravl.training.loop import FinetuneConfig

__all__ = ["MitigationContractError", "check_mitigation_method"]


class MitigationContractError(RavlError, AssertionError):
    """A registered mitigation method breaks the contract; the message names the check."""


def _fail(name: str, what: str) -> MitigationContractError:
    return MitigationContractError(f"Mitigation method {name!r}: {what}")


def _check_config(spec: MitigationMethod) -> Any:
    cls = spec.config_cls
    if not dataclasses.is_dataclass(cls):
        raise _fail(spec.name, f"its config {cls!r} is not a dataclass.")
    try:
        cfg = spec.make_config(None)
    except Exception as exc:  # noqa: BLE001 - any failure is the finding
        raise _fail(spec.name, f"its config cannot be built with its defaults ({exc}).") from exc
    if not cls.__dataclass_params__.frozen:
        raise _fail(spec.name, f"its config {cls.__name__} must be a frozen dataclass.")
    try:
        text = json.dumps(cfg.to_dict())
        back = cls.from_dict(json.loads(text))
    except Exception as exc:  # noqa: BLE001
        raise _fail(spec.name, f"its config does not round-trip through JSON with to_dict/from_dict ({exc}).") from exc
    if back != cfg:
        raise _fail(spec.name, f"its config changes in a JSON round trip: {cfg!r} -> {back!r}.")
    for f in dataclasses.fields(cls):
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise _fail(spec.name, f"config field {f.name!r} has no default; every knob needs one.")
    return cfg


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_model(None, checkpoint=path).module.state_dict()


def check_mitigation_method(name: str, *, checkpoint: str | os.PathLike, train: Any, discovery: Any,
                            work_dir: str | os.PathLike, config: FinetuneConfig | None = None,
                            method_config: Any = None, labelling: Any = None) -> MitigationResult:
    """Run ``name`` through :func:`mitigate` and check the mitigation-method contract.

    Checks, in order: the registry entry (a frozen config dataclass with a default for every
    field that round-trips through JSON); one run from the audited checkpoint's recorded start
    gives finite losses, a loadable ravl checkpoint whose ``config.json`` records the method and
    its config, and a :class:`~ravl.mitigation.MitigationResult` that round-trips through
    ``mitigation.json``; rerunning the same call resumes the finished run instead of training
    again; a second run in another folder ends with identical weights (determinism).

    Args:
        name: The registered method.
        checkpoint: An audited ravl checkpoint recording its ``"init"``.
        train: The training dataset (or folder) the checkpoint was fine-tuned on.
        discovery: A discovery result (or ``discovery.json``) with at least one feature.
        work_dir: A folder for the runs (``run/`` and ``again/`` are written there).
        config: The recipe (default: one epoch, batch 16, no validation).
        method_config: The method's config (default: its defaults).
        labelling: A precomputed labelling of the training split (skips labelling).

    Returns:
        The first run's :class:`~ravl.mitigation.MitigationResult`.

    Raises:
        MitigationContractError: The first check that fails, naming the method and what broke.
    """
    spec = get_mitigation_method(name)
    _check_config(spec)
    config = config or FinetuneConfig(epochs=1, batch_size=16, val_split=None)
    work = Path(work_dir)
    kw = dict(method=name, config=config, method_config=method_config, labelling=labelling,
              allow_empty_labelling=True, progress=False)

    res = mitigate(checkpoint, train, discovery, out_dir=work / "run", **kw)
    if len(res.history) != config.epochs:
        raise _fail(name, f"{len(res.history)} epochs were recorded, {config.epochs} expected.")
    for row in res.history:
        if not math.isfinite(row["train_loss"]):
            raise _fail(name, f"the training loss is not finite at epoch {row['epoch']}: {row['train_loss']}.")
    if not isinstance(res.objective, str) or not res.objective:
        raise _fail(name, "its objective has no name (recorded in checkpoints and resume states).")
    ck = json.loads((work / "run" / "config.json").read_text(encoding="utf-8"))
    recorded = ck.get("mitigation") or {}
    if recorded.get("method") != name or recorded.get("method_config") != res.method_config:
        raise _fail(name, "the checkpoint's config.json does not record the method and its config.")
    if spec.make_config(res.method_config) != spec.make_config(method_config):
        raise _fail(name, "the recorded method config does not rebuild the config that ran.")
    back = MitigationResult.from_dict(json.loads((work / "run" / "mitigation.json").read_text(encoding="utf-8")))
    if back != res:
        raise _fail(name, "mitigation.json does not round-trip to the MitigationResult that was returned.")
    first = _weights(work / "run")

    again = mitigate(checkpoint, train, discovery, out_dir=work / "run", **kw)
    if again.resumed_from != (config.epochs, 0):
        raise _fail(name, f"rerunning the same call trained again (resumed from {again.resumed_from}) instead of "
                          "returning the finished run.")
    mitigate(checkpoint, train, discovery, out_dir=work / "again", **kw)
    second = _weights(work / "again")
    diff = [k for k in first if not torch.equal(first[k], second[k])]
    if diff:
        raise _fail(name, f"two runs of the same call end with different weights ({diff[:3]}...): the method is not "
                          "deterministic (draw randomness from generators seeded by the recipe's seed and epoch, "
                          "e.g. MitigationContext.epoch_rng).")
    return res
