"""Sample content for demos and tests."""

from __future__ import annotations

import io
import tarfile


def tar_gz(members: dict[str, bytes]) -> bytes:
    """A gzip-compressed tar archive holding ``members`` (name -> content) as regular files."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()
