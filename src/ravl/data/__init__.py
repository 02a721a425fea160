"""ravl.data."""
