"""The package version, importable without importing the package's exports."""

__version__ = "0.1.0"
