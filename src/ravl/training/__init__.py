"""Fine-tuning: contrastive losses, a plain training loop, resumable checkpoints."""

from ravl.training.loop import ContrastiveObjective, FinetuneConfig, FinetuneResult, finetune
from ravl.training.losses import clip_loss

__all__ = ["clip_loss", "ContrastiveObjective", "FinetuneConfig", "FinetuneResult", "finetune"]
