"""Weights the way users have them (for benchmarks/own_model_cli.sh): open_clip's own saving code and
transformers' save_pretrained, random full-size RN50, ViT-B-16 and a CLIPModel ViT-B/16.

    python benchmarks/own_model_weights.py OUT_DIR
"""
import sys
from pathlib import Path

import open_clip
import torch
import transformers

from ravl.models.hf import clip_bpe_merges, write_byte_bpe_tokenizer

out = Path(sys.argv[1])
out.mkdir(parents=True, exist_ok=True)
torch.manual_seed(0)
# RN50: open_clip's training output format ({"epoch", "name", "state_dict" with "module." keys, ...})
m = open_clip.create_model("RN50")
torch.save({"epoch": 1, "name": "rn50-run", "state_dict": {"module." + k: v for k, v in m.state_dict().items()}},
           out / "rn50_epoch_1.pt")
# ViT-B-16: a plain state dict, as torch.save(model.state_dict()) after open_clip.create_model
m = open_clip.create_model("ViT-B-16")
torch.save(m.state_dict(), out / "vit_b_16.pt")
# HF: CLIPModel ViT-B/16 from a config, with CLIP's BPE vocabulary (open_clip bundles it) and CLIP's processor
hf = out / "hf-clip-vit-b-16"
hf.mkdir(exist_ok=True)
write_byte_bpe_tokenizer(hf, clip_bpe_merges())  # CLIP's vocabulary, from open_clip's bundled copy
tok = transformers.CLIPTokenizer.from_pretrained(str(hf))
cfg = transformers.CLIPConfig(text_config=dict(hidden_size=512, intermediate_size=2048, num_attention_heads=8,
                                               num_hidden_layers=12, max_position_embeddings=77),
                              vision_config=dict(hidden_size=768, intermediate_size=3072, num_attention_heads=12,
                                                 num_hidden_layers=12, image_size=224, patch_size=16),
                              projection_dim=512)
model = transformers.CLIPModel(cfg)
model.save_pretrained(str(hf))
tok.save_pretrained(str(hf))
transformers.CLIPImageProcessor(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224}).save_pretrained(str(hf))
print("wrote", sorted(p.name for p in out.iterdir()))
