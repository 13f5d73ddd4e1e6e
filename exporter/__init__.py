"""Prometheus exporter for the be.ENERGISED CPO API."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("beenergised-exporter")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+unknown"
