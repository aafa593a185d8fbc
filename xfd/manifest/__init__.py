"""DECLARE: the manifest, what must be on every node (stores, artifacts, settings), as validated data.

``Manifest`` here is the declaring layer's class; ``xfd.Manifest`` (:mod:`xfd.api`) is the subclass users
hold, which adds ``plan()``, ``distribute()`` and ``to_xenna()``.
"""

from xfd.manifest.builder import ManifestBuilder
from xfd.manifest.model import Manifest, ObjectArtifact, PrefixArtifact, Settings, Store, Unpack

__all__ = ["Manifest", "ManifestBuilder", "ObjectArtifact", "PrefixArtifact", "Settings", "Store", "Unpack"]
