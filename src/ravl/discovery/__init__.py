"""ravl.discovery."""
