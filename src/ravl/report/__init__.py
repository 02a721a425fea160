"""ravl.report."""
