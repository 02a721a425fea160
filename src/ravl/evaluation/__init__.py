"""ravl.evaluation."""
