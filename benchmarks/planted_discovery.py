"""(for benchmarks/own_model_cli.sh) A discovery.json whose feature is the planted red square (ground truth of the synthetic setting), for
mitigating a model whose one-epoch fine-tuning learned no shortcut that discovery could find."""
import sys

import numpy as np

from ravl.data.dataset import load_dataset
from ravl.discovery import DiscoveryResult

eval_dir, out = sys.argv[1], sys.argv[2]
ds = load_dataset(eval_dir).subset("val")
t = ds.region_table()
attrs = np.array(t.attributes)
names = sorted(set(attrs.tolist()))
medoids = [int(np.flatnonzero(attrs == a)[0]) for a in names]
cluster = names.index("red_square")
m = medoids[cluster]
i = int(t.image_index[m])
region = {"region_index": m, "image_index": i, "similarity": 1.0, "file_name": ds.records[i].file_name,
          "box": t.boxes[m].tolist()}
d = {"status": "ok", "message": "planted feature (ground truth)", "scoring": "ravl", "classes": list(ds.classes),
     "config": {}, "random_state": 0, "n_regions": len(t), "n_images": len(ds), "n_clusters": len(medoids),
     "silhouette": None, "silhouette_positive": False, "inertia": None, "k_sweep": [], "bounded_memory": False,
     "sample_size": None, "negative_similarity": "none", "medoid_indices": medoids,
     "region_clusters": [0] * len(t), "clusters": [],
     "features": [{"rank": 1, "cluster": cluster, "class": "nine", "gap": 1.0, "influence": 1.0,
                   "spurious_pattern": True, "n_regions": 1, "n_images": 1, "medoid_region_index": m,
                   "table": [], "regions": [region]}],
     "meta": {"data": str(eval_dir), "split": "val", "region_mode": "masked"}}
DiscoveryResult.from_dict(d).to_json(out)
print("wrote", out)
