"""DECLARE: the manifest, what must be on every node (stores, artifacts, settings)."""

from xfd.manifest.builder import ManifestBuilder
from xfd.manifest.model import Manifest, ObjectArtifact, PrefixArtifact, Settings, Store, Unpack

__all__ = ["Manifest", "ManifestBuilder", "ObjectArtifact", "PrefixArtifact", "Settings", "Store", "Unpack"]
