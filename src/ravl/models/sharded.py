"""Embedding extraction sharded over processes or a Ray cluster, identical to the serial run.

Discovery and the mitigation labelling start from the embeddings of every image and region of a
dataset (:func:`~ravl.models.regions.embed_images`, :func:`~ravl.models.regions.embed_regions`).
For a large audit that is most of the work, and it is embarrassingly parallel: with a
:class:`Sharding` whose backend is ``"ray"``, the rows are cut into shards, each Ray task
rebuilds the model from its ``load_record`` (the :func:`~ravl.models.load_model` arguments, so
the checkpoint must be readable at the same path on every node) on its own GPU or CPU, embeds its
shard, and the driver puts the shards back in order.

Identical results: a shard boundary always falls on a batch boundary of the serial run (every
shard holds whole batches: ``batch_size`` images, regions in ``masked`` / ``crop`` mode, or
images that have regions in ``roi`` mode), so each forward pass sees exactly the inputs it sees
serially. On the same hardware and thread count the embeddings are bit for bit those of
the serial run; across devices (a GPU worker against a CPU driver) they agree to float32
rounding, as any two runs on those devices would.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ravl.exceptions import InvalidParameterError
from ravl.models.base import load_model
from ravl.models.regions import DEFAULT_REGION_MODE, REGION_MODES, embed_images, embed_regions
from ravl.utils.tasks import BACKENDS, run_tasks
from ravl.utils.validation import check_choice, check_float, check_int

__all__ = ["Sharding", "embed_images_sharded", "embed_regions_sharded"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Sharding:
    """How embedding extraction is spread out.

    Attributes:
        backend: ``"serial"`` (this process) or ``"ray"`` (Ray tasks, see
            :func:`ravl.utils.tasks.run_tasks`).
        num_workers: Ray: shards embedded at once (default: what the cluster's CPUs, or GPUs
            with ``gpus_per_worker``, allow).
        ray_address: Ray: an existing cluster (``"auto"``, ``"HOST:PORT"``, ``"ray://..."``);
            ``None`` starts a private local Ray.
        shard_batches: Batches per shard; a shard also loads the model once, so keep shards large
            enough to amortise that.
        gpus_per_worker: Ray: GPUs each task reserves (``0``: CPU tasks). A task with a GPU
            embeds on ``cuda``.
        threads_per_worker: Ray: CPUs each task reserves; it also sets the task's torch threads.
    """

    backend: str = "serial"
    num_workers: int | None = None
    ray_address: str | None = None
    shard_batches: int = 32
    gpus_per_worker: float = 0.0
    threads_per_worker: int = 1

    def __post_init__(self) -> None:
        c = "Sharding"
        check_choice(self.backend, "backend", c, BACKENDS)
        if self.num_workers is not None:
            check_int(self.num_workers, "num_workers", c, low=1)
        check_int(self.shard_batches, "shard_batches", c, low=1)
        check_float(self.gpus_per_worker, "gpus_per_worker", c, low=0)
        check_int(self.threads_per_worker, "threads_per_worker", c, low=1)
        if self.backend == "serial" and (self.ray_address is not None or self.num_workers is not None
                                         or self.gpus_per_worker):
            raise InvalidParameterError("ray_address, num_workers and gpus_per_worker of Sharding are used with "
                                        "backend='ray' only (--ray-address, --ray-workers and --gpus-per-worker "
                                        "need --backend ray).")


@dataclass(frozen=True)
class _Shard:
    """One task: embed some images or region rows of a dataset slice (picklable)."""

    kind: str                      # "images" or "regions"
    record: dict[str, Any]         # load_model arguments
    dataset: Any                   # the images of this shard (a RegionDataset slice)
    boxes: list[list[list[float]]] | None = None  # regions: the boxes of each image of the slice
    mode: str = DEFAULT_REGION_MODE
    batch_size: int = 128
    threads: int = 0               # torch threads of the task; 0: leave them (serial, this process)
    use_gpu: bool = False
    rows: tuple[int, int] = (0, 0)  # output rows [start, stop)


_MODELS: dict[str, Any] = {}  # per worker process: Ray reuses workers, so a model loads once


def _worker_model(record: dict[str, Any], use_gpu: bool):
    device = "cuda" if use_gpu and torch.cuda.is_available() else "cpu"
    key = json.dumps([record, device], sort_keys=True, default=str)
    if key not in _MODELS:
        _MODELS.clear()
        kwargs = {k: v for k, v in record.items() if k not in ("model", "checkpoint")}
        _MODELS[key] = load_model(record["model"], checkpoint=record.get("checkpoint"), device=device, **kwargs)
    return _MODELS[key]


def _embed_shard(task: _Shard) -> np.ndarray:
    """What a worker runs (top level, so Ray can ship it)."""
    if task.threads:
        torch.set_num_threads(task.threads)
    model = _worker_model(task.record, task.use_gpu)
    if task.kind == "images":
        return embed_images(model, task.dataset, batch_size=task.batch_size, normalize=False, progress=False)
    return embed_regions(model, task.dataset, boxes=task.boxes, mode=task.mode, batch_size=task.batch_size,
                         normalize=False, progress=False)


def _threads(sharding: Sharding) -> int:
    return sharding.threads_per_worker if sharding.backend == "ray" else 0


def _record(model) -> dict[str, Any]:
    record = getattr(model, "load_record", None)
    if not isinstance(record, dict) or not record.get("model"):
        raise InvalidParameterError(
            f"Sharded embedding rebuilds the model on every worker from its load_record, and "
            f"{getattr(model, 'name', type(model).__name__)!r} has none: load it with ravl.load_model (or "
            "save it with ravl.save_checkpoint and load that), or use backend='serial'.")
    return dict(record)


def _check_dataset(dataset: Any, caller: str) -> None:
    if not (hasattr(dataset, "subset") and hasattr(dataset, "region_table") and hasattr(dataset, "load_image")):
        raise InvalidParameterError(f"{caller} with a Ray backend takes a RegionDataset (its images are read by the "
                                    f"workers). Got {type(dataset).__name__}.")


def _run(tasks: list[_Shard], n_rows: int, dim: int, sharding: Sharding, normalize: bool, progress: bool,
         desc: str) -> np.ndarray:
    out = np.zeros((n_rows, dim), dtype=np.float32)
    for task, emb in run_tasks(_embed_shard, tasks, backend=sharding.backend, num_workers=sharding.num_workers,
                               ray_address=sharding.ray_address, threads=sharding.threads_per_worker,
                               gpus=sharding.gpus_per_worker, progress=progress, desc=desc):
        start, stop = task.rows
        out[start:stop] = emb
    if normalize and n_rows:
        out = torch.nn.functional.normalize(torch.from_numpy(out), dim=-1).numpy()
    return out


def embed_images_sharded(model, dataset: Any, *, sharding: Sharding | None = None, batch_size: int = 128,
                         normalize: bool = True, progress: bool = True) -> np.ndarray:
    """:func:`~ravl.models.regions.embed_images` of a dataset, shard by shard (module docstring).

    With ``sharding=None`` this is the plain call; a ``"serial"`` sharding runs the same shards
    one after the other in this process (a check of the sharding itself).
    """
    if sharding is None:
        return embed_images(model, dataset, batch_size=batch_size, normalize=normalize, progress=progress)
    batch_size = check_int(batch_size, "batch_size", "embed_images_sharded", low=1)
    _check_dataset(dataset, "embed_images_sharded")
    record, n = _record(model), len(dataset)
    step = batch_size * sharding.shard_batches
    tasks = [_Shard("images", record, dataset.subset(indices=range(s, min(s + step, n))), batch_size=batch_size,
                    threads=_threads(sharding), use_gpu=sharding.gpus_per_worker > 0,
                    rows=(s, min(s + step, n)))
             for s in range(0, n, step)]
    return _run(tasks, n, model.embed_dim, sharding, normalize, progress, "embedding image shards")


def _region_shards(image_index: np.ndarray, mode: str, batch_size: int, shard_batches: int
                   ) -> list[tuple[int, int]]:
    """``[start, stop)`` region rows of each shard, cut on the serial run's batch boundaries."""
    n = len(image_index)
    if mode != "roi":  # serial batches: every ``batch_size`` regions
        step = batch_size * shard_batches
        return [(s, min(s + step, n)) for s in range(0, n, step)]
    # roi: serial batches hold ``batch_size`` images with regions; cut after every shard_batches of them
    firsts = np.flatnonzero(np.r_[True, image_index[1:] != image_index[:-1]]) if n else np.zeros(0, dtype=np.int64)
    cuts = firsts[::batch_size * shard_batches].tolist() + [n]
    return [(a, b) for a, b in zip(cuts[:-1], cuts[1:])]


def embed_regions_sharded(model, dataset: Any, *, mode: str = DEFAULT_REGION_MODE,
                          sharding: Sharding | None = None, batch_size: int = 128, normalize: bool = True,
                          progress: bool = True) -> np.ndarray:
    """:func:`~ravl.models.regions.embed_regions` of every region of a dataset, shard by shard
    (module docstring). With ``sharding=None`` this is the plain call; a ``"serial"`` sharding
    runs the same shards one after the other in this process.

    Returns:
        ``[R, D]`` float32 embeddings in ``dataset.region_table()`` order.
    """
    if sharding is None:
        return embed_regions(model, dataset, mode=mode, batch_size=batch_size, normalize=normalize,
                             progress=progress)
    check_choice(mode, "mode", "embed_regions_sharded", REGION_MODES)
    batch_size = check_int(batch_size, "batch_size", "embed_regions_sharded", low=1)
    _check_dataset(dataset, "embed_regions_sharded")
    record = _record(model)
    table = dataset.region_table()
    image_index = np.asarray(table.image_index, dtype=np.int64)
    boxes = np.asarray(table.boxes, dtype=np.float64).reshape(-1, 4)
    tasks = []
    for start, stop in _region_shards(image_index, mode, batch_size, sharding.shard_batches):
        images = sorted(set(image_index[start:stop].tolist()))
        local = {g: k for k, g in enumerate(images)}
        per_image: list[list[list[float]]] = [[] for _ in images]
        for r in range(start, stop):
            per_image[local[int(image_index[r])]].append(boxes[r].tolist())
        tasks.append(_Shard("regions", record, dataset.subset(indices=images), boxes=per_image, mode=mode,
                            batch_size=batch_size, threads=_threads(sharding),
                            use_gpu=sharding.gpus_per_worker > 0, rows=(start, stop)))
    return _run(tasks, len(image_index), model.embed_dim, sharding, normalize, progress,
                f"embedding region shards ({mode})")
