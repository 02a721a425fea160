"""Shared helpers: parameter validation, atomic I/O, optional imports, progress bars."""
