"""xfd: put large artifacts on every node of a Ray cluster, fetching each byte from object storage once."""

from xfd import cache
from xfd._core import __version__
from xfd.api import Manifest
from xfd.errors import ManifestError, PlanError, XfdError
from xfd.manifest import ManifestBuilder

__all__ = ["Manifest", "cache", "ManifestBuilder", "ManifestError", "PlanError", "XfdError", "__version__"]
