"""``mitigate``: fine-tune again with RaVL's region-aware loss or a baseline (Stage 2).

One call does what docs/algorithm.md §4 describes:

1. load the audited checkpoint (the model discovery examined) and label every region of the
   fine-tuning split with it (:func:`~ravl.mitigation.labelling.label_regions`): spurious
   regions, candidate-core regions and class × discovered-feature groups;
2. load the starting weights: ``start="init"`` (default) rebuilds the weights the original
   fine-tuning started from, read from the audited checkpoint's ``config.json`` ``"init"``
   (e.g. ``load_model("tiny", seed=init["seed"])``) or given as ``init=``;
   ``start="checkpoint"`` continues from the audited checkpoint itself;
3. fine-tune with the method's objective and data order through
   :func:`ravl.training.finetune` (resumable: rerunning the same call continues an interrupted
   run and ends with the same weights), with the original fine-tuning's hyper-parameters
   unless ``config`` is given.

The output folder is a ravl checkpoint; its ``config.json`` gains a ``"mitigation"`` entry
(method, start, discovery file, options, labelling summary) once the run finishes, and the
folder also holds ``mitigation.json`` (the :class:`MitigationResult`) and ``labelling.json``
(the full :class:`~ravl.mitigation.labelling.RegionLabelling`).

Methods come from the registry (:mod:`ravl.mitigation.registry`; built-ins in
:mod:`ravl.mitigation.methods`, described in ``docs/mitigation.md``): ``standard``,
``upsample``, ``vl-erm``, ``vl-gdro``, ``spurious-aware``, ``cfr`` and ``ravl``. Each owns its
config dataclass (``method_config``); :class:`MitigationOptions` holds what every method shares.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from ravl.data.dataset import check_dataset, load_dataset
from ravl.discovery.result import DiscoveryResult
from ravl.exceptions import CheckpointError, DatasetError, InvalidParameterError
from ravl.mitigation.labelling import (
    DEFAULT_ASSIGNMENT_QUANTILE,
    DEFAULT_MIN_GAP_RATIO,
    RegionLabelling,
    label_regions,
)
from ravl.mitigation.registry import (
    TRAINABLE,
    MitigationContext,
    get_mitigation_method,
)
from ravl.models.base import load_model
from ravl.models.checkpoint import read_checkpoint_config
from ravl.models.regions import DEFAULT_REGION_MODE, REGION_MODES
from ravl.training.loop import FinetuneConfig, finetune
from ravl.training.options import check_precision
from ravl.utils.io import atomic_write_json
from ravl.utils.outputs import locks_output
from ravl.utils.validation import check_choice, check_float
from ravl.zeroshot import check_templates, default_templates

__all__ = ["STARTS", "MitigationOptions", "MitigationResult", "mitigate", "load_init_model", "resolve_templates",
           "set_trainable"]

logger = logging.getLogger(__name__)

#: Starting points: the original fine-tuning's initialisation, or the audited checkpoint.
STARTS = ("init", "checkpoint")

RESULT_FILE = "mitigation.json"
LABELLING_FILE = "labelling.json"


@dataclass(frozen=True)
class MitigationOptions:
    """What every mitigation method shares: how regions are labelled, the class text, what trains.

    A method's own knobs (λ, τ, η, ...) are its config dataclass, given to :func:`mitigate` as
    ``method_config``.

    Attributes:
        features: Discovered features treated as spurious: ``"class"`` (default: every
            discovered feature tied to the top-ranked feature's class), ``"top"`` (the
            top-ranked one; ``None`` too), ``"all"`` or a tuple of ranks.
        min_gap_ratio: With ``features="class"``: a feature besides the top one is used only
            when its performance gap is at least this fraction of the top feature's.
        assignment_quantile: Labelling threshold: a region joins a spurious cluster only when
            its similarity to the medoid reaches this quantile of the cluster members'
            similarities in discovery (``None``: nearest medoid only, the paper's rule).
        region_mode: Region embedding mode for labelling and region losses (``None``: the
            discovery's, else ``"masked"``).
        templates: Prompt templates of the class text (``None``: the templates discovery scored
            with, recorded in ``discovery.json``'s ``meta``, else the zero-shot defaults).
        trainable: ``"all"`` (every parameter, the original fine-tuning's recipe) or
            ``"image-projection"`` (the image tower's final projection only, as CFR and the
            Spurious-Aware authors train); ``None``: the method's registered default.
    """

    features: Any = "class"
    min_gap_ratio: float = DEFAULT_MIN_GAP_RATIO
    assignment_quantile: float | None = DEFAULT_ASSIGNMENT_QUANTILE
    region_mode: str | None = None
    templates: tuple[str, ...] | None = None
    trainable: str | None = None

    def __post_init__(self) -> None:
        c = "MitigationOptions"
        f = self.features
        if isinstance(f, list):
            object.__setattr__(self, "features", tuple(f))
        elif f is not None and not (f in ("class", "top", "all") or isinstance(f, tuple)):
            raise InvalidParameterError(f"The 'features' parameter of {c} must be 'class', 'top', 'all', None or a "
                                        f"tuple of ranks. Got {f!r} instead.")
        if self.region_mode is not None:
            check_choice(self.region_mode, "region_mode", c, REGION_MODES)
        check_float(self.min_gap_ratio, "min_gap_ratio", c, low=0, high=1)
        if self.assignment_quantile is not None:
            check_float(self.assignment_quantile, "assignment_quantile", c, low=0, high=1)
        if self.templates is not None:
            object.__setattr__(self, "templates", check_templates(self.templates, c))
        if self.trainable is not None:
            check_choice(self.trainable, "trainable", c, TRAINABLE)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> MitigationOptions:
        """Inverse of :meth:`to_dict` (unknown keys ignored)."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


@dataclass(frozen=True)
class MitigationResult:
    """What :func:`mitigate` did.

    Attributes:
        method: A registered mitigation method.
        start: ``"init"`` or ``"checkpoint"``.
        checkpoint_dir: The mitigated checkpoint folder.
        audited_checkpoint: The checkpoint discovery examined (used for labelling).
        discovery: Path of ``discovery.json`` when given as a file, else ``None``.
        init: Where the starting weights came from (``load_model`` arguments).
        objective: The objective's ``name`` (recorded in the checkpoint).
        options: :class:`MitigationOptions` as a dict, with the resolved templates and trainable
            set, and what the method resolved (e.g. RaVL's warm-up epochs).
        method_config: The method's config dataclass as a dict.
        labelling: :meth:`RegionLabelling.summary` (``None`` for standard fine-tuning without
            a discovered feature).
        finetune: :meth:`ravl.training.loop.FinetuneResult.to_dict`.
    """

    method: str
    start: str
    checkpoint_dir: str
    audited_checkpoint: str
    discovery: str | None
    init: dict[str, Any]
    objective: str
    options: dict[str, Any]
    labelling: dict[str, Any] | None
    finetune: dict[str, Any] = field(default_factory=dict)
    method_config: dict[str, Any] = field(default_factory=dict)

    @property
    def history(self) -> list[dict[str, Any]]:
        """Per-epoch training metrics."""
        return list(self.finetune.get("history", []))

    @property
    def resumed_from(self) -> tuple[int, int] | None:
        """``(epoch, step)`` the run resumed from, or ``None``."""
        r = self.finetune.get("resumed_from")
        return None if r is None else tuple(r)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> MitigationResult:
        """Inverse of :meth:`to_dict`."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------

def load_init_model(init: dict[str, Any], *, device: str | None = None):
    """Rebuild the starting weights recorded as a checkpoint's ``"init"``.

    ``init`` holds ``model`` (registry name), optionally ``checkpoint`` (weights it started
    from) and the model's own keyword arguments (``seed`` for the tiny CLIP).
    """
    if not isinstance(init, dict) or not isinstance(init.get("model"), str):
        raise CheckpointError(f"The starting point must be a dict with a 'model' name, e.g. {{'model': 'tiny', "
                              f"'seed': 0}}. Got {init!r}.")
    kwargs = {k: v for k, v in init.items() if k not in ("model", "checkpoint")}
    return load_model(init["model"], checkpoint=init.get("checkpoint"), device=device, **kwargs)


def resolve_templates(options: MitigationOptions, discovery, checkpoint_templates: Sequence[str] | None = None, *,
                      model: Any = None, classes: Sequence[str] | None = None) -> tuple[tuple[str, ...], str]:
    """The prompt templates of the class text, and where they came from.

    ``options.templates``, else the ones discovery scored with (``discovery.meta["templates"]``,
    the classifier it judged), else the templates the audited checkpoint recorded (mined from its
    training captions by :func:`ravl.finetune`), else :func:`ravl.zeroshot.default_templates` of
    ``model`` and ``classes``.
    """
    if options.templates:
        return tuple(options.templates), "given"
    recorded = (getattr(discovery, "meta", None) or {}).get("templates")
    if recorded:
        return tuple(recorded), "discovery"
    if checkpoint_templates:
        return tuple(checkpoint_templates), "checkpoint"
    return tuple(default_templates(model, classes)), "default"


def set_trainable(model, trainable: str) -> int:
    """Freeze every parameter but the ones ``trainable`` names; returns how many stay trainable.

    ``"image-projection"`` keeps the parameters under the adapter's ``image_projection_prefixes``.

    Raises:
        InvalidParameterError: For an adapter that does not name its image projection.
    """
    check_choice(trainable, "trainable", "set_trainable", TRAINABLE)
    params = list(model.module.named_parameters())
    if trainable == "all":
        for _, p in params:
            p.requires_grad_(True)
        return len(params)
    prefixes = tuple(getattr(model, "image_projection_prefixes", ()) or ())
    keep = [n for n, _ in params if n.startswith(prefixes)] if prefixes else []
    if not keep:
        raise InvalidParameterError(
            f"The model {getattr(model, 'name', type(model).__name__)!r} does not name its image projection (adapter "
            "attribute image_projection_prefixes), so trainable='image-projection' cannot be applied; use "
            "trainable='all'.")
    for n, p in params:
        p.requires_grad_(n in set(keep))
    return len(keep)


# ---------------------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------------------

@locks_output("out_dir", "mitigate")
def mitigate(checkpoint: str | os.PathLike, train_dataset: Any, discovery: Any, *, out_dir: str | os.PathLike,
             method: str = "ravl", start: str = "init", config: FinetuneConfig | None = None,
             options: MitigationOptions | None = None, method_config: Any = None, model_name: str | None = None,
             init: dict[str, Any] | None = None, labelling: RegionLabelling | None = None,
             eval_dataset: Any = None, device: str | None = None, resume: bool = True,
             allow_data_change: bool = False, allow_empty_labelling: bool = False,
             progress: bool = True, workers: int = 0, sharding: Any = None) -> MitigationResult:
    """Fine-tune again with a mitigation method, using the regions discovery flagged.

    Args:
        checkpoint: The audited ravl checkpoint folder (the model discovery examined).
        train_dataset: The fine-tuning :class:`~ravl.data.RegionDataset` or its folder (captions
            and labels on every training row).
        discovery: A :class:`~ravl.discovery.DiscoveryResult` or the path of ``discovery.json``.
        out_dir: Output checkpoint folder (resumable; rerun to continue).
        method: A registered mitigation method (:func:`~ravl.mitigation.list_mitigation_methods`).
        start: ``"init"``: the original fine-tuning's starting weights (``config.json``
            ``"init"`` of ``checkpoint``, or ``init``); ``"checkpoint"``: the audited weights.
        config: :class:`~ravl.training.FinetuneConfig` (default: the audited checkpoint's
            recorded fine-tuning configuration, else the defaults).
        options: :class:`MitigationOptions`, what every method shares (default:
            ``MitigationOptions()``).
        method_config: The method's own config: an instance of its config dataclass, a dict of
            its fields, or ``None`` for its defaults.
        model_name: Registry name of the audited model (default: read from its ``config.json``).
        init: Explicit starting point for ``start="init"``, e.g. ``{"model": "tiny", "seed": 0}``.
        labelling: A precomputed :class:`~ravl.mitigation.labelling.RegionLabelling` of the
            training split (skips labelling; it must come from the audited model).
        eval_dataset: The dataset discovery ran on, if it moved from ``discovery.meta["data"]``.
        device: Torch device (default: the model's default).
        resume: Continue an interrupted run in ``out_dir``.
        allow_data_change: Accept data that changed since discovery (its split) or since the
            interrupted run started (the training split); refused by default.
        allow_empty_labelling: Train a method that needs the discovered feature even when no
            training region was labelled spurious (refused by default: the feature is then not in
            the training data as discovery saw it, or the data changed).
        progress: Show progress bars.
        workers: Image-loading processes of the fine-tuning (``0``: this process); results do
            not depend on it.
        sharding: Spread the labelling's region embedding over a Ray cluster
            (:class:`~ravl.models.sharded.Sharding`); results do not depend on it.

    Returns:
        A :class:`MitigationResult` (also written to ``out_dir/mitigation.json``).

    Raises:
        UnknownMitigationMethodError: For an unknown method.
        InvalidParameterError: For an unknown start, a bad option, or a discovery without a
            feature for a method that needs one.
        CheckpointError: When ``start="init"`` and the checkpoint records no ``"init"``.
    """
    caller = "mitigate"
    spec = get_mitigation_method(method, where=f"the 'method' parameter of {caller}")
    check_choice(start, "start", caller, STARTS)
    opts = options or MitigationOptions()
    if not isinstance(opts, MitigationOptions):
        raise InvalidParameterError(f"The 'options' parameter of {caller} must be a MitigationOptions. "
                                    f"Got {type(opts).__name__}.")
    method_cfg = spec.make_config(method_config)
    audited_dir = Path(checkpoint)
    ck_cfg = read_checkpoint_config(audited_dir)
    name = model_name or ck_cfg["model"]
    if config is None:
        config = FinetuneConfig.from_dict(ck_cfg["finetune"]) if isinstance(ck_cfg.get("finetune"), dict) \
            else FinetuneConfig()
    if not isinstance(config, FinetuneConfig):
        raise InvalidParameterError(f"The 'config' parameter of {caller} must be a FinetuneConfig. "
                                    f"Got {type(config).__name__}.")
    check_precision(config.precision, device or "cpu")  # before labelling, the first long step
    discovery_path = None
    if isinstance(discovery, (str, os.PathLike)):
        discovery_path = str(Path(discovery).resolve())
        discovery = DiscoveryResult.from_json(discovery)
    elif not isinstance(discovery, DiscoveryResult):
        raise InvalidParameterError(f"The 'discovery' parameter of {caller} must be a DiscoveryResult or the path of a "
                                    f"discovery.json. Got {type(discovery).__name__}.")
    if isinstance(train_dataset, (str, os.PathLike)):
        train_dataset = load_dataset(train_dataset)
    train_dataset = check_dataset(train_dataset, caller, "train_dataset")
    train = train_dataset.subset(config.train_split)

    # Where the new run starts.
    if start == "init":
        init_record = dict(init) if init is not None else ck_cfg.get("init")
        if not isinstance(init_record, dict) or not init_record.get("model"):
            raise CheckpointError(f"{audited_dir}/config.json records no 'init' (the weights its fine-tuning "
                                  "started from). Pass init={'model': ..., ...} / --init-seed, or start='checkpoint'.")
    else:
        init_record = {"model": name, "checkpoint": str(audited_dir.resolve())}

    audited_cache: list[Any] = []

    def load_audited():
        if not audited_cache:
            audited_cache.append(load_model(name, checkpoint=audited_dir, device=device))
        return audited_cache[0]

    # 1. Labelling with the audited model.
    if labelling is None and (spec.needs_feature or discovery.features):
        labelling = label_regions(load_audited(), train_dataset, discovery, features=opts.features,
                                  region_mode=opts.region_mode, split=config.train_split,
                                  eval_dataset=eval_dataset, min_gap_ratio=opts.min_gap_ratio,
                                  assignment_quantile=opts.assignment_quantile,
                                  allow_data_change=allow_data_change, progress=progress, sharding=sharding)
    if labelling is not None:
        if not isinstance(labelling, RegionLabelling):
            raise InvalidParameterError(f"The 'labelling' parameter of {caller} must be a RegionLabelling.")
        if labelling.n_images != len(train):
            raise InvalidParameterError(
                f"The labelling covers {labelling.n_images} images but split {config.train_split!r} has "
                f"{len(train)}; label the same training split.")
        if spec.needs_feature and labelling.region_labels.n_spurious == 0 and not allow_empty_labelling:
            raise DatasetError(
                f"No region of the '{config.train_split}' split was assigned to the discovered feature(s) "
                f"{list(labelling.feature_ranks)}, so {method!r} has nothing to mitigate: the training data may not "
                "contain the feature as discovery saw it, or the data changed since discovery. Check the data and "
                "discovery.json, loosen the labelling (--assignment-quantile none), or train anyway with "
                "--allow-empty-labelling (allow_empty_labelling=True).")
    labels = train.label_indices
    if spec.needs_feature and (labels < 0).any():
        raise InvalidParameterError(f"Method {method!r} needs a class label on every training image.")
    # The class text is the zero-shot classifier discovery judged: its templates unless given.
    templates, template_source = resolve_templates(opts, discovery,
                                                   (ck_cfg.get("templates") or {}).get("templates"))
    if template_source == "default":  # the model's default set (e.g. ImageNet-style for pretrained CLIPs)
        templates = default_templates(load_audited(), list(train.classes))
    region_mode = opts.region_mode or (labelling.region_mode if labelling is not None else DEFAULT_REGION_MODE)

    # 2. The method's objective and data order.
    ctx = MitigationContext(train=train, labels=labels, classes=list(train.classes), templates=templates,
                            labelling=labelling, finetune=config, start=start, region_mode=region_mode,
                            load_audited=load_audited, progress=progress,
                            init=init_record if start == "init" else None)
    plan = spec.build(ctx, method_cfg)
    audited_cache.clear()

    # 3. Fine-tune from the starting weights.
    if plan.from_audited or start == "checkpoint":
        model = load_model(name, checkpoint=audited_dir, device=device)
    else:
        model = load_init_model(init_record, device=device)
    trainable = opts.trainable or spec.trainable
    set_trainable(model, trainable)
    out = Path(out_dir)
    recorded = {**opts.to_dict(), "templates": list(templates), "template_source": template_source,
                "trainable": trainable, **plan.info}
    # Everything besides the recipe that determines the run: resuming another set-up is refused.
    run_info = {"method": method, "start": start, "init": init_record, "options": recorded,
                "method_config": method_cfg.to_dict(),
                "labelling": labelling.fingerprint() if labelling is not None else None}
    res = finetune(model, train_dataset, out, config, objective=plan.objective, resume=resume, progress=progress,
                   init=init_record, epoch_order=plan.epoch_order, run_info=run_info,
                   run_info_defaults={"method_config": spec.make_config(None).to_dict(),
                                      "options": MitigationOptions().to_dict()},
                   allow_data_change=allow_data_change, workers=workers)

    summary = labelling.summary() if labelling is not None else None
    result = MitigationResult(method=method, start=start, checkpoint_dir=str(out),
                              audited_checkpoint=str(audited_dir.resolve()), discovery=discovery_path,
                              init=init_record, objective=getattr(plan.objective, "name", method),
                              options=recorded, labelling=summary, finetune=res.to_dict(),
                              method_config=method_cfg.to_dict())
    # Record what ran in the checkpoint's config.json (written by finetune; one atomic rewrite).
    ck = read_checkpoint_config(out)
    ck["mitigation"] = {"method": method, "start": start, "discovery": discovery_path,
                        "audited_checkpoint": result.audited_checkpoint, "options": result.options,
                        "method_config": result.method_config, "labelling": summary}
    atomic_write_json(out / "config.json", ck)
    atomic_write_json(out / RESULT_FILE, result.to_dict())
    if labelling is not None:
        atomic_write_json(out / LABELLING_FILE, labelling.to_dict(), indent=None)
    return result
