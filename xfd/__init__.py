"""xfd: put large artifacts on every node of a Ray cluster, fetching each byte from object storage once."""

from xfd._core import __version__

__all__ = ["__version__"]
