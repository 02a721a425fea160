"""Sharded embedding extraction: shards cut on the serial run's batch boundaries give the serial
embeddings bit for bit, in this process and as Ray tasks."""

import numpy as np
import pytest
import torch

from ravl.exceptions import InvalidParameterError
from ravl.models import load_model
from ravl.models.regions import embed_images, embed_regions
from ravl.models.sharded import Sharding, _region_shards, embed_images_sharded, embed_regions_sharded


@pytest.fixture(scope="module")
def ds(small_setting):
    from ravl.data.dataset import load_dataset

    full = load_dataset(small_setting.eval_dir).subset("val")
    sub = full.subset(indices=range(60))
    assert len(sub) == 60 and sub.regions_per_image.sum() > 60  # several regions per image
    return sub


@pytest.fixture(scope="module")
def model():
    return load_model("tiny", seed=3)


def test_region_shards_fall_on_batch_boundaries():
    image_index = np.array([0, 0, 0, 1, 2, 2, 3, 4, 4, 4, 5])
    # masked / crop: every batch_size regions
    assert _region_shards(image_index, "masked", 2, 2) == [(0, 4), (4, 8), (8, 11)]
    # roi: every batch_size images that have regions
    assert _region_shards(image_index, "roi", 2, 1) == [(0, 4), (4, 7), (7, 11)]
    assert _region_shards(np.zeros(0, dtype=np.int64), "roi", 2, 1) == []


@pytest.mark.parametrize("mode", ["masked", "roi", "crop"])
def test_serial_shards_equal_the_plain_run(ds, model, mode):
    plain = embed_regions(model, ds, mode=mode, batch_size=7, progress=False)
    sharded = embed_regions_sharded(model, ds, mode=mode, batch_size=7, sharding=Sharding(shard_batches=2),
                                    progress=False)
    assert sharded.shape == plain.shape and np.array_equal(sharded, plain)


def test_serial_image_shards_equal_the_plain_run(ds, model):
    plain = embed_images(model, ds, batch_size=7, progress=False)
    assert np.array_equal(embed_images_sharded(model, ds, batch_size=7, sharding=Sharding(shard_batches=3),
                                               progress=False), plain)
    # no sharding: the plain call
    assert np.array_equal(embed_images_sharded(model, ds, batch_size=7, progress=False), plain)


def test_ray_workers_give_the_serial_embeddings(ds, model):
    pytest.importorskip("ray")  # the test extra installs it: CI runs this
    threads = torch.get_num_threads()  # same thread count as this process: bit-identical results
    sharding = Sharding("ray", num_workers=2, shard_batches=2, threads_per_worker=threads)
    # one Ray session for the three calls, so the test pays Ray's start-up once
    import ray

    ray.init(address="local", num_cpus=2 * threads, include_dashboard=False, log_to_driver=False,
             configure_logging=False)
    try:
        assert np.array_equal(embed_images_sharded(model, ds, batch_size=8, sharding=sharding, progress=False),
                              embed_images(model, ds, batch_size=8, progress=False))
        for mode in ("masked", "roi"):
            assert np.array_equal(
                embed_regions_sharded(model, ds, mode=mode, batch_size=8, sharding=sharding, progress=False),
                embed_regions(model, ds, mode=mode, batch_size=8, progress=False)), mode
    finally:
        ray.shutdown()


def test_sharding_needs_a_reloadable_model_and_ray_flags_with_ray(ds, model):
    bare = load_model("tiny", seed=3)
    bare.load_record = None
    with pytest.raises(InvalidParameterError, match="rebuilds the model on every worker from its load_record"):
        embed_images_sharded(bare, ds, sharding=Sharding(), progress=False)
    with pytest.raises(InvalidParameterError, match="need --backend ray"):
        Sharding(ray_address="auto")
    with pytest.raises(InvalidParameterError, match="'shard_batches'"):
        Sharding("ray", shard_batches=0)
    with pytest.raises(InvalidParameterError, match="takes a RegionDataset"):
        embed_images_sharded(model, [ds.load_image(0)], sharding=Sharding(), progress=False)


def test_labelling_with_sharding_is_the_serial_labelling(mitigation_env):
    from ravl.mitigation.labelling import label_regions

    env = mitigation_env
    audited = load_model("tiny", checkpoint=env["ckpt"])
    a = label_regions(audited, env["train"], env["discovery"], progress=False)
    b = label_regions(audited, env["train"], env["discovery"], progress=False, batch_size=16,
                      sharding=Sharding(shard_batches=1))
    c = label_regions(audited, env["train"], env["discovery"], progress=False, batch_size=16)
    assert b.fingerprint() == c.fingerprint()
    assert np.array_equal(a.region_labels.is_spurious, b.region_labels.is_spurious)
