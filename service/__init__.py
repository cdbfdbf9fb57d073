"""lineinspect: edge inference service for production-line inspection cameras."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("lineinspect")
except PackageNotFoundError:  # running from a source tree without an install
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
