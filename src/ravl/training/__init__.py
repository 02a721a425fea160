"""ravl.training."""
