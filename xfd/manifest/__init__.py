"""DECLARE: the manifest, what must be on every node (stores, artifacts, settings)."""
