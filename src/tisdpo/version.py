"""The package's version (its own module, so that every layer can name it without importing the API)."""

__version__ = "0.1.0"
