"""``mitigate``: fine-tune again with RaVL's region-aware loss or a baseline (Stage 2).

One call does what method.md §4 describes:

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

Methods (see ``docs/mitigation.md``):

- ``"standard"``: CLIP contrastive loss on image-caption pairs, the original recipe.
- ``"upsample"``: standard loss, every class × discovered-feature group resampled up to the
  largest group each epoch (:func:`~ravl.mitigation.group_balanced_indices`).
- ``"ravl"``: CLIP loss + λ·(L_R + L_A) on the labelled regions
  (:class:`~ravl.mitigation.RegionAwareObjective`).
- ``"vl-erm"``: images against class prompts (:class:`~ravl.mitigation.VLERMObjective`).
- ``"vl-gdro"``: VL-ERM under Group DRO over the discovered groups, group-uniform sampling.
- ``"spurious-aware"``: Yang et al. 2023 (:class:`~ravl.mitigation.SpuriousAwareObjective`),
  group-uniform sampling.
- ``"cfr"``: CFR's calibration stage; the ERM model is the audited checkpoint (with
  ``start="init"`` the ERM stage from the initialisation is the audited fine-tuning itself, so
  calibration always starts from the audited weights), the calibration set its misclassified
  training images (see :func:`_cfr_objective`).
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ravl.exceptions import CheckpointError
from ravl.utils.io import atomic_write_json
from ravl.utils.validation import check_choice, check_float, check_int

__all__ = ["METHODS", "STARTS", "TRAINABLE", "DEFAULT_TRAINABLE", "MitigationOptions", "MitigationResult",
           "mitigate", "load_init_model", "resolve_templates", "set_trainable"]

logger = logging.getLogger(__name__)

#: Mitigation methods accepted by :func:`mitigate`.
METHODS = ("ravl", "standard", "upsample", "vl-erm", "vl-gdro", "spurious-aware", "cfr")
#: Starting points: the original fine-tuning's initialisation, or the audited checkpoint.
STARTS = ("init", "checkpoint")
#: What a method trains: every parameter, or the image tower's final projection only.
TRAINABLE = ("all", "image-projection")
#: Per-method default of :attr:`MitigationOptions.trainable` (others: ``"all"``). CFR trains the
#: projection on top of a frozen ERM model [ref: You et al.]; trained whole, its objective (no
#: image-text term) destroyed the zero-shot classifier (docs/mitigation.md).
DEFAULT_TRAINABLE = {"cfr": "image-projection"}

RESULT_FILE = "mitigation.json"
LABELLING_FILE = "labelling.json"


@dataclass(frozen=True)
class MitigationOptions:
    """Method-specific knobs of :func:`mitigate` (each method reads the ones it uses).

    Attributes:
        features: Discovered features treated as spurious: ``"class"`` (default: every
            discovered feature tied to the top-ranked feature's class), ``"top"`` (the
            top-ranked one; ``None`` too), ``"all"`` or a tuple of ranks.
        min_gap_ratio: With ``features="class"``: a feature besides the top one is used only
            when its performance gap is at least this fraction of the top feature's.
        assignment_quantile: Labelling threshold: a region joins a spurious cluster only when
            its similarity to the medoid reaches this quantile of the cluster members'
            similarities in discovery (``None``: nearest medoid only, the paper's rule).
        region_mode: Region embedding mode for labelling and the RaVL loss (``None``: the
            discovery's, else ``"masked"``).
        lam: λ of the RaVL loss.
        region_warmup_epochs: RaVL: epochs at the start with λ = 0 (CLIP loss only). ``None``:
            1 with ``start="init"`` (the region embeddings of a fresh initialisation are
            meaningless; measured in docs/mitigation.md), 0 with ``start="checkpoint"``; never
            more than ``epochs - 1``.
        tau: Temperature of the RaVL loss.
        eta: Group DRO step size (VL-GDRO).
        spurious_names: Names of the spurious attribute for Spurious-Aware's L_ls (e.g.
            ``("red square",)``); empty: L_ls is off (discovery gives no name).
        templates: Prompt templates of the class text (``None``: the templates discovery scored
            with, recorded in ``discovery.json``'s ``meta``, else the zero-shot defaults).
        trainable: ``"all"`` (every parameter, the original fine-tuning's recipe) or
            ``"image-projection"`` (the image tower's final projection only, as CFR and the
            Spurious-Aware authors train); ``None``: the method's default
            (:data:`DEFAULT_TRAINABLE`).
        cfr_positives: Positives per CFR calibration anchor.
        cfr_negatives: Negatives per CFR calibration anchor.
    """

    features: Any = "class"
    min_gap_ratio: float = 0.5
    assignment_quantile: float | None = 0.05
    region_mode: str | None = None
    lam: float = 1.0
    region_warmup_epochs: int | None = None
    tau: float = 0.07
    eta: float = 0.01
    spurious_names: tuple[str, ...] = ()
    templates: tuple[str, ...] | None = None
    trainable: str | None = None
    cfr_positives: int = 16
    cfr_negatives: int = 16

    def __post_init__(self) -> None:
        c = "MitigationOptions"
        f = self.features
        if isinstance(f, list):
            object.__setattr__(self, "features", tuple(f))
        elif f is not None and not (f in ("class", "top", "all") or isinstance(f, tuple)):
            raise ValueError(f"The 'features' parameter of {c} must be 'class', 'top', 'all', None or a tuple of "
                             f"ranks. Got {f!r} instead.")
        if self.region_mode is not None:
            from ravl.mitigation.objectives import REGION_MODES

            check_choice(self.region_mode, "region_mode", c, REGION_MODES)
        check_float(self.min_gap_ratio, "min_gap_ratio", c, low=0, high=1)
        if self.assignment_quantile is not None:
            check_float(self.assignment_quantile, "assignment_quantile", c, low=0, high=1)
        check_float(self.lam, "lam", c, low=0)
        if self.region_warmup_epochs is not None:
            check_int(self.region_warmup_epochs, "region_warmup_epochs", c, low=0)
        check_float(self.tau, "tau", c, low=0, closed="neither")
        check_float(self.eta, "eta", c, low=0)
        object.__setattr__(self, "spurious_names", tuple(self.spurious_names))
        if self.templates is not None:
            object.__setattr__(self, "templates", tuple(self.templates))
        if self.trainable is not None:
            check_choice(self.trainable, "trainable", c, TRAINABLE)
        check_int(self.cfr_positives, "cfr_positives", c, low=1)
        check_int(self.cfr_negatives, "cfr_negatives", c, low=1)

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
        method: One of :data:`METHODS`.
        start: ``"init"`` or ``"checkpoint"``.
        checkpoint_dir: The mitigated checkpoint folder.
        audited_checkpoint: The checkpoint discovery examined (used for labelling).
        discovery: Path of ``discovery.json`` when given as a file, else ``None``.
        init: Where the starting weights came from (``load_model`` arguments).
        objective: The objective's ``name`` (recorded in the checkpoint).
        options: :class:`MitigationOptions` as a dict.
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
    from ravl.models import load_model

    if not isinstance(init, dict) or not isinstance(init.get("model"), str):
        raise CheckpointError(f"The starting point must be a dict with a 'model' name, e.g. {{'model': 'tiny', "
                              f"'seed': 0}}. Got {init!r}.")
    kwargs = {k: v for k, v in init.items() if k not in ("model", "checkpoint")}
    return load_model(init["model"], checkpoint=init.get("checkpoint"), device=device, **kwargs)


def resolve_templates(options: MitigationOptions, discovery) -> tuple[str, ...]:
    """The prompt templates of the class text: ``options.templates``, else the ones discovery
    scored with (``discovery.meta["templates"]``), else :data:`ravl.zeroshot.DEFAULT_TEMPLATES`."""
    from ravl.zeroshot import DEFAULT_TEMPLATES

    if options.templates:
        return tuple(options.templates)
    recorded = (getattr(discovery, "meta", None) or {}).get("templates")
    return tuple(recorded) if recorded else tuple(DEFAULT_TEMPLATES)


def set_trainable(model, trainable: str) -> int:
    """Freeze every parameter but the ones ``trainable`` names; returns how many stay trainable.

    ``"image-projection"`` keeps the parameters under the adapter's ``image_projection_prefixes``.

    Raises:
        ValueError: For an adapter that does not name its image projection.
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
        raise ValueError(f"The model {getattr(model, 'name', type(model).__name__)!r} does not name its image "
                         "projection (adapter attribute image_projection_prefixes), so trainable='image-projection' "
                         "cannot be applied; use trainable='all'.")
    for n, p in params:
        p.requires_grad_(n in set(keep))
    return len(keep)


def _order_seed(seed: int, epoch: int, salt: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), int(epoch), salt])


def _cfr_objective(audited, train, labels: np.ndarray, cfg, opts: MitigationOptions, templates, progress: bool):
    """CFR's stages before calibration, with the audited checkpoint as the ERM model [design].

    Calibration set: training images the audited model misclassifies zero-shot; for each, P
    positives (correctly classified images of its class; any other image of its class when
    there is none) and Q negatives (images of other classes), drawn with a generator seeded by
    ``config.seed``, embedded by the audited model (constants).
    """
    from ravl.mitigation.objectives import CFRCalibrationObjective
    from ravl.models.regions import embed_images
    from ravl.zeroshot import class_text_embeddings

    emb = embed_images(audited, train, progress=progress)
    text = class_text_embeddings(audited, list(train.classes), templates=templates).float().cpu().numpy()
    pred = (emb @ text.T).argmax(1)
    wrong = np.flatnonzero(pred != labels)
    rng = np.random.default_rng([int(cfg.seed), 7])
    pos, neg = [], []
    for a in wrong:
        same = np.flatnonzero((labels == labels[a]) & (pred == labels) & (np.arange(len(labels)) != a))
        if not len(same):
            same = np.flatnonzero((labels == labels[a]) & (np.arange(len(labels)) != a))
        if not len(same):
            same = np.array([a])
        other = np.flatnonzero(labels != labels[a])
        if not len(other):
            other = np.array([a])
        pos.append(emb[rng.choice(same, opts.cfr_positives, replace=len(same) < opts.cfr_positives)])
        neg.append(emb[rng.choice(other, opts.cfr_negatives, replace=len(other) < opts.cfr_negatives)])
    d = emb.shape[1]
    pos_a = np.stack(pos) if pos else np.zeros((0, opts.cfr_positives, d), np.float32)
    neg_a = np.stack(neg) if neg else np.zeros((0, opts.cfr_negatives, d), np.float32)
    logger.info("CFR calibration set: %d of %d training images misclassified by the audited model.",
                len(wrong), len(labels))
    kw = {"templates": templates} if templates else {}
    return CFRCalibrationObjective(labels, wrong, pos_a, neg_a, class_names=list(train.classes),
                                   n_epochs=cfg.epochs, **kw), int(len(wrong))


class _UpsampledContrastive:
    """Standard CLIP loss under its own name, so upsampled runs are recorded and resumed as such."""

    name = "upsample"

    def __call__(self, model, batch):
        from ravl.training.loop import ContrastiveObjective

        return ContrastiveObjective()(model, batch)


# ---------------------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------------------

def mitigate(checkpoint: str | os.PathLike, train_dataset: Any, discovery: Any, *, out_dir: str | os.PathLike,
             method: str = "ravl", start: str = "init", config=None, options: MitigationOptions | None = None,
             model_name: str | None = None, init: dict[str, Any] | None = None, labelling=None,
             eval_dataset: Any = None, device: str | None = None, resume: bool = True,
             progress: bool = True) -> MitigationResult:
    """Fine-tune again with a mitigation method, using the regions discovery flagged.

    Args:
        checkpoint: The audited ravl checkpoint folder (the model discovery examined).
        train_dataset: The fine-tuning :class:`~ravl.data.RegionDataset` or its folder (captions
            and labels on every training row).
        discovery: A :class:`~ravl.discovery.DiscoveryResult` or the path of ``discovery.json``.
        out_dir: Output checkpoint folder (resumable; rerun to continue).
        method: One of :data:`METHODS`.
        start: ``"init"``: the original fine-tuning's starting weights (``config.json``
            ``"init"`` of ``checkpoint``, or ``init``); ``"checkpoint"``: the audited weights.
        config: :class:`~ravl.training.FinetuneConfig` (default: the audited checkpoint's
            recorded fine-tuning configuration, else the defaults).
        options: :class:`MitigationOptions` (default: ``MitigationOptions()``).
        model_name: Registry name of the audited model (default: read from its ``config.json``).
        init: Explicit starting point for ``start="init"``, e.g. ``{"model": "tiny", "seed": 0}``.
        labelling: A precomputed :class:`~ravl.mitigation.labelling.RegionLabelling` of the
            training split (skips labelling; it must come from the audited model).
        eval_dataset: The dataset discovery ran on, if it moved from ``discovery.meta["data"]``.
        device: Torch device (default: the model's default).
        resume: Continue an interrupted run in ``out_dir``.
        progress: Show progress bars.

    Returns:
        A :class:`MitigationResult` (also written to ``out_dir/mitigation.json``).

    Raises:
        ValueError: For an unknown method or start, or a discovery without a feature (every
            method but ``"standard"`` needs one).
        CheckpointError: When ``start="init"`` and the checkpoint records no ``"init"``.
    """
    from ravl.data.dataset import RegionDataset, load_dataset
    from ravl.discovery import DiscoveryResult
    from ravl.mitigation import objectives as O
    from ravl.mitigation.labelling import RegionLabelling, label_regions
    from ravl.models import load_model
    from ravl.models.checkpoint import read_checkpoint_config
    from ravl.training.loop import ContrastiveObjective, FinetuneConfig, finetune

    caller = "mitigate"
    check_choice(method, "method", caller, METHODS)
    check_choice(start, "start", caller, STARTS)
    opts = options or MitigationOptions()
    if not isinstance(opts, MitigationOptions):
        raise TypeError(f"The 'options' parameter of {caller} must be a MitigationOptions. Got {type(opts).__name__}.")
    audited_dir = Path(checkpoint)
    ck_cfg = read_checkpoint_config(audited_dir)
    name = model_name or ck_cfg["model"]
    if config is None:
        config = FinetuneConfig.from_dict(ck_cfg["finetune"]) if isinstance(ck_cfg.get("finetune"), dict) \
            else FinetuneConfig()
    if not isinstance(config, FinetuneConfig):
        raise TypeError(f"The 'config' parameter of {caller} must be a FinetuneConfig. Got {type(config).__name__}.")
    discovery_path = None
    if isinstance(discovery, (str, os.PathLike)):
        discovery_path = str(Path(discovery).resolve())
        discovery = DiscoveryResult.from_json(discovery)
    if not isinstance(train_dataset, RegionDataset):
        train_dataset = load_dataset(train_dataset)
    train = train_dataset.subset(config.train_split)

    # Where the new run starts.
    if start == "init":
        init_record = dict(init) if init is not None else ck_cfg.get("init")
        if not isinstance(init_record, dict) or not init_record.get("model"):
            raise CheckpointError(f"{audited_dir}/config.json records no 'init' (the weights its fine-tuning "
                                  "started from). Pass init={'model': ..., ...} / --init-seed, or start='checkpoint'.")
    else:
        init_record = {"model": name, "checkpoint": str(audited_dir.resolve())}

    # 1. Labelling (and CFR's calibration set) with the audited model.
    needs_feature = method != "standard"
    audited = None
    if labelling is None and (needs_feature or discovery.features):
        audited = load_model(name, checkpoint=audited_dir, device=device)
        labelling = label_regions(audited, train_dataset, discovery, features=opts.features,
                                  region_mode=opts.region_mode, split=config.train_split,
                                  eval_dataset=eval_dataset, min_gap_ratio=opts.min_gap_ratio,
                                  assignment_quantile=opts.assignment_quantile, progress=progress)
    if labelling is not None:
        if not isinstance(labelling, RegionLabelling):
            raise TypeError(f"The 'labelling' parameter of {caller} must be a RegionLabelling.")
        if labelling.n_images != len(train):
            raise ValueError(f"The labelling covers {labelling.n_images} images but split {config.train_split!r} "
                             f"has {len(train)}; label the same training split.")
    labels = train.label_indices
    if method not in ("standard",) and (labels < 0).any():
        raise ValueError(f"Method {method!r} needs a class label on every training image.")
    classes = list(train.classes)
    # The class text is the zero-shot classifier discovery judged: its templates unless given.
    templates = resolve_templates(opts, discovery)
    kw_t = {"templates": list(templates)}
    seed = config.seed
    epoch_order = None
    extra_info: dict[str, Any] = {}
    if method == "standard":
        objective = ContrastiveObjective()
    elif method == "upsample":
        groups = labelling.groups
        objective = _UpsampledContrastive()

        def epoch_order(epoch: int) -> torch.Tensor:
            return torch.from_numpy(O.group_balanced_indices(groups, random_state=_order_seed(seed, epoch, 1)))
    elif method == "ravl":
        mode = opts.region_mode or labelling.region_mode
        warm = opts.region_warmup_epochs
        warm = (1 if start == "init" else 0) if warm is None else warm
        warm = min(warm, config.epochs - 1)
        extra_info["region_warmup_epochs"] = warm
        objective = O.RegionAwareObjective(labelling.region_labels, labels, class_names=classes, lam=opts.lam,
                                           tau=opts.tau, region_mode=mode, warmup_epochs=warm, **kw_t)
    elif method == "vl-erm":
        objective = O.VLERMObjective(labels, class_names=classes, **kw_t)
    elif method in ("vl-gdro", "spurious-aware"):
        groups = labelling.groups
        if method == "vl-gdro":
            objective = O.GroupDROObjective(labels, groups, class_names=classes, n_groups=labelling.n_groups,
                                            eta=opts.eta, **kw_t)
        else:
            if not opts.spurious_names:
                logger.info("Spurious-Aware without spurious_names: L_ls is off (discovery names no attribute).")
            objective = O.SpuriousAwareObjective(labels, class_names=classes, spurious_names=opts.spurious_names,
                                                 **kw_t)
        n = len(train)

        def epoch_order(epoch: int) -> torch.Tensor:
            return torch.from_numpy(O.group_uniform_indices(groups, n, random_state=_order_seed(seed, epoch, 2)))
    else:  # cfr
        if audited is None:
            audited = load_model(name, checkpoint=audited_dir, device=device)
        objective, n_cal = _cfr_objective(audited, train, labels, config, opts, templates, progress)
        extra_info["cfr_calibration_samples"] = n_cal
    del audited

    if method == "cfr" or start == "checkpoint":
        # CFR calibrates an ERM model: its first stage, ERM from the initialisation with the
        # original recipe, *is* the audited fine-tuning, so calibration starts from those weights.
        model = load_model(name, checkpoint=audited_dir, device=device)
    else:
        model = load_init_model(init_record, device=device)
    trainable = opts.trainable or DEFAULT_TRAINABLE.get(method, "all")
    set_trainable(model, trainable)
    out = Path(out_dir)
    # Everything besides the recipe that determines the run: resuming another set-up is refused.
    run_info = {"method": method, "start": start, "init": init_record,
                "options": {**opts.to_dict(), "templates": list(templates), "trainable": trainable, **extra_info},
                "labelling": labelling.fingerprint() if labelling is not None else None}
    res = finetune(model, train_dataset, out, config, objective=objective, resume=resume, progress=progress,
                   init=init_record, epoch_order=epoch_order, run_info=run_info)

    summary = labelling.summary() if labelling is not None else None
    result = MitigationResult(method=method, start=start, checkpoint_dir=str(out),
                              audited_checkpoint=str(audited_dir.resolve()), discovery=discovery_path,
                              init=init_record, objective=getattr(objective, "name", method),
                              options={**opts.to_dict(), "templates": list(templates), "trainable": trainable,
                                       **extra_info},
                              labelling=summary, finetune=res.to_dict())
    # Record what ran in the checkpoint's config.json (written by finetune; one atomic rewrite).
    cfg_path = out / "config.json"
    ck = read_checkpoint_config(out)
    ck["mitigation"] = {"method": method, "start": start, "discovery": discovery_path,
                        "audited_checkpoint": result.audited_checkpoint, "options": result.options,
                        "labelling": summary}
    atomic_write_json(cfg_path, ck)
    atomic_write_json(out / RESULT_FILE, result.to_dict())
    if labelling is not None:
        atomic_write_json(out / LABELLING_FILE, labelling.to_dict(), indent=None)
    return result
