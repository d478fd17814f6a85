"""kiln's version (keep in step with pyproject.toml); part of every compile-cache key."""

__version__ = "0.1.0"
