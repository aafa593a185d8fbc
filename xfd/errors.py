"""The one exception hierarchy of xfd.

Every error xfd raises on purpose is an :class:`XfdError`. Where a builtin exception already carries the
meaning (a missing file, a denied permission, a bad value) xfd raises the builtin subclass too, so
``except FileNotFoundError`` keeps working around xfd calls.
"""

from __future__ import annotations

from typing import Any


class XfdError(Exception):
    """Base class of every error xfd raises on purpose."""


class ConfigError(XfdError, ValueError):
    """An option or environment setting has a value xfd cannot use; the message names it and the fix."""


class EngineError(XfdError):
    """The node engine (the Rust core) failed; the message names the file or chunk concerned."""


class RangeError(EngineError, ValueError):
    """A byte range does not lie inside the file it addresses."""


class OriginError(EngineError, ConnectionError):
    """The origin store could not deliver bytes, even after retries with backoff."""


class ObjectChangedError(EngineError):
    """An object changed at the origin since the plan was compiled; nothing mixed was published.
    Plan again (or investigate who rewrote the object)."""


class StoreConfigError(EngineError, ValueError):
    """A store URL or option the engine cannot use on this node."""


class IntegrityError(EngineError):
    """Bytes did not match their digest (a peer's chunk, or the manifest's sha256); never published."""


class DestinationExistsError(EngineError, FileExistsError):
    """A destination holds something xfd did not write, or a file stands where a destination needs a
    directory; it was left untouched. ``overwrite = true`` under ``[settings]`` replaces a destination file
    (never a file in the way of a directory)."""


class DestinationBusyError(EngineError):
    """Another xfd run on the same node is writing this destination now. Wait for it to end (this run then
    finds the file in its cache) or stop it, then run again."""


class StorageError(EngineError, OSError):
    """The node's disk refused a write: full, read-only or over quota. ``errno`` and
    ``filename`` are set; the part file xfd was writing is removed when the run ends, so the space comes
    back, and the destination is untouched."""


class ArchiveError(EngineError):
    """An archive cannot be read or its format cannot be told."""


class UnsafeArchiveError(ArchiveError):
    """An archive was refused: an entry would escape its destination, is a device, or limits were hit.
    Nothing was written outside the destination and the destination was not changed."""


class PeerError(EngineError, ConnectionError):
    """A peer node could not deliver a chunk (gone, refused, busy, or answered badly)."""


class ManifestError(XfdError, ValueError):
    """A manifest has problems. ``problems`` lists each with the path of the offending value.

    The message names the source (the TOML file, or ``builder``) and has one line per problem, such as
    ``artifacts[2].unpack.format: must be one of auto, tar, tar.gz, tgz, zip (got 'rar')``.
    """

    def __init__(self, problems: list[tuple[str, str]], source: str | None = None) -> None:
        self.problems = list(problems)
        self.source = source
        super().__init__(self._message())

    def _message(self) -> str:
        lines = [f"{path}: {message}" if path else message for path, message in self.problems]
        where = self.source or "manifest"
        if len(lines) == 1:
            return f"{where}: {lines[0]}"
        return f"{where} has {len(lines)} problems:\n" + "\n".join(f"  {line}" for line in lines)


class PlanError(XfdError):
    """The stores do not hold what the manifest asks for (a missing key, a denied access, a key that
    would land outside its destination, a changed object in locked mode). The message says which
    artifact, which key, and what to do."""


class DistributionCancelled(XfdError):
    """The distribution was cancelled (``cancel()``, or an interrupt while waiting) before it finished.
    Nothing partial was published; running it again resumes from what the nodes already hold."""


class DistributionError(XfdError, RuntimeError):
    """A distribution ended without every surviving node holding every file. ``report`` says what
    each node did and lists the failures (raised where a failed run must stop the caller, as before a
    Xenna pipeline)."""

    def __init__(self, report: Any) -> None:
        self.report = report
        super().__init__(f"the distribution failed:\n{report.summary()}")


__all__ = [
    "ArchiveError",
    "ConfigError",
    "DestinationBusyError",
    "DestinationExistsError",
    "DistributionCancelled",
    "DistributionError",
    "EngineError",
    "IntegrityError",
    "ManifestError",
    "ObjectChangedError",
    "OriginError",
    "PeerError",
    "PlanError",
    "RangeError",
    "StorageError",
    "StoreConfigError",
    "UnsafeArchiveError",
    "XfdError",
]
