"""Fine-tuning: contrastive losses, a plain training loop, resumable checkpoints."""

from ravl.training.losses import clip_loss
from ravl.training.loop import FinetuneConfig, FinetuneResult, finetune

__all__ = ["clip_loss", "FinetuneConfig", "FinetuneResult", "finetune"]
