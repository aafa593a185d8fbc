"""The manifest model: frozen attrs classes, plain data. Change them with ``attrs.evolve``.

Validation lives in :mod:`xfd.manifest.validate` (every problem at once, each with its path), the
TOML format in :mod:`xfd.manifest.toml_format`, the fluent builder in :mod:`xfd.manifest.builder`. This is
the declaring layer: it imports nothing above it. What a manifest can be made to do (plan, distribute) is
added by :class:`xfd.Manifest` (:mod:`xfd.api`), a subclass in the top layer.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Literal, Self

import attrs

from xfd.errors import ManifestError
from xfd.manifest.stores import OptionValue, display_options

MiB = 1 << 20
GiB = 1 << 30

UnpackFormat = Literal["auto", "tar", "tar.gz", "tgz", "zip"]
UNPACK_FORMATS: tuple[str, ...] = ("auto", "tar", "tar.gz", "tgz", "zip")
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".zip")

ChunkSize = int | Literal["auto"]
AUTO_CHUNK_MIN = 16 * MiB
AUTO_CHUNK_MAX = 64 * MiB
AUTO_CHUNKS_PER_FILE = 32


def normalized_destination(path: str) -> str:
    """``path`` with empty (``//``) and ``.`` segments collapsed: ``/models//./model.bin`` is ``/models/model.bin``.

    A trailing ``/`` (or a last ``.`` segment) is kept as ``/``: on an object's ``to`` it means "inside this
    directory". Anything but an absolute path free of ``..`` segments and NUL bytes comes back as it is, so
    that validation refuses it with its path and the value the user wrote. Two spellings of one path must
    be one destination: the node would otherwise get two writers of one file.
    """
    if not isinstance(path, str) or not path.startswith("/") or "\x00" in path:
        return path
    segments = path.split("/")
    if ".." in segments:
        return path
    kept = [segment for segment in segments if segment not in ("", ".")]
    inside = bool(kept) and segments[-1] in ("", ".")
    return "/" + "/".join(kept) + ("/" if inside else "")


def _normalized_optional(path: str | None) -> str | None:
    return None if path is None else normalized_destination(path)


@attrs.frozen
class Settings:
    """How a distribution runs. Every default is chosen for clusters of 2 to 1000 nodes on 10-100 Gb/s."""

    chunk_size: ChunkSize = "auto"
    """Bytes per chunk, the unit of transfer and of verification: a size between 1 MiB and 4 GiB, or
    ``"auto"`` (the default): each file gets the power of two between 16 MiB and 64 MiB that cuts it into
    about 32 chunks (:meth:`chunk_size_for`). Chunks that are small next to their file let peers share
    while the origin is still busy, and leave little to spread after the origin's last byte (a 1 GiB file
    on 4 nodes behind a 100 MB/s origin: 12.4 s with 64 MiB chunks, 11.4 s with 32 MiB); chunks of at
    least 16 MiB keep per-chunk costs (requests, syncs, scheduling) small, and 64 MiB keeps a 100 GB
    artifact at ~1,600 chunks. Measured in ``docs/benchmarks.md``."""

    node_parallelism: int = 8
    """Chunks a node downloads at once (from the origin or from peers). 8 streams fill a 25-100 Gb/s
    link from S3-class stores without thrashing the disk."""

    upload_slots: int = 8
    """Chunks a node serves to peers at once. Matches ``node_parallelism`` so that every download a node
    starts can find a free slot somewhere."""

    origin_parallelism: int = 32
    """Concurrent ranged GETs to the origin across the whole cluster. Enough to saturate an S3 prefix,
    few enough to stay clear of its request-rate throttling (503 SlowDown)."""

    origin_chunk_streams: int = 8
    """Ranged GETs that fetch one chunk from the origin in parallel (each at least 8 MiB), so the
    cluster has ``origin_parallelism / origin_chunk_streams`` chunks in flight from the origin (4 by
    default). Few chunks, each arriving fast, let peers start sharing while the origin is still busy;
    many chunks sharing the origin would all arrive together at the end."""

    overwrite: bool = False
    """Replace files at destinations that xfd did not write. Off: such a file stops the run with an
    error and is left as it is."""

    origin_attempts: int = 8
    """Tries per chunk against the origin, the first included. 8 rides out a few seconds of origin
    trouble (connection resets, 5xx, throttling) without hiding an origin that is really down."""

    origin_backoff: float = 0.1
    """Seconds to wait after the first failed try; doubled after each further one, with full jitter.
    After throttling (503 SlowDown, 429) the wait starts ten times longer: the origin asked to slow down."""

    origin_max_backoff: float = 20.0
    """No single wait between tries is longer than this many seconds."""

    origin_timeout: float = 600.0
    """Seconds within which all tries of one chunk must be done; bounds how long a dead origin can stall
    a node. 10 minutes is ample for a 64 MiB chunk on any working link."""

    disk_reserve: int = 1 * GiB
    """Bytes of free space that must remain on the file system of an unpack's destination while it
    unpacks (a size such as ``"1GiB"``, or bytes; 0 turns the check off): an archive that would eat into
    it is refused and nothing of it stays. 1 GiB leaves room for the logs, caches and scratch files of the
    jobs that run on the node next; a node whose disk an unpack filled breaks them all."""

    origin_rate: int = 0
    """Bytes per second the whole cluster may fetch from the origin, a rate such as ``"200MB/s"`` (or bytes
    per second); 0 (the default): uncapped. For an origin link or egress budget shared with other work.
    Each of the ``origin_parallelism / origin_chunk_streams`` transfers the scheduler lets run from the
    origin at once gets an equal share, so the sum never exceeds the cap and reaches it while they are
    all busy (``docs/rate-caps.md``)."""

    origin_request_rate: int = 0
    """GET requests per second the whole cluster may send to the origin; 0 (the default): uncapped. For
    a request budget (S3 bills and throttles per request): small files make one GET each. Shared out as
    ``origin_rate`` is."""

    upload_rate: int = 0
    """Bytes per second each node's peer server may send, a rate such as ``"1GB/s"`` (or bytes per second);
    0 (the default): uncapped. For a node link that training traffic shares. At least ``upload_slots``
    times 2 MiB/s, the pace below which a peer transfer is taken for stalled."""

    def chunk_size_for(self, size: int) -> int:
        """The chunk size of a file of ``size`` bytes."""
        if self.chunk_size != "auto":
            return self.chunk_size
        chunk = AUTO_CHUNK_MIN
        while chunk * AUTO_CHUNKS_PER_FILE < size and chunk < AUTO_CHUNK_MAX:
            chunk *= 2
        return chunk


@attrs.frozen
class Store:
    """Where artifacts come from: a URL and obstore options (see :mod:`xfd.manifest.stores`)."""

    url: str
    options: Mapping[str, OptionValue] = attrs.field(factory=dict)

    def __repr__(self) -> str:
        return f"Store(url={self.url!r}, options={display_options(self.options)!r})"


@attrs.frozen
class Unpack:
    """Extract an archive artifact after it has arrived.

    ``to`` defaults to the archive's destination without its archive suffix
    (``/data/set.tar.gz`` unpacks into ``/data/set``). The directory belongs to this archive alone:
    unpacking replaces it whole, so no other artifact may write into it, contain it or share it.

    ``max_size`` and ``max_ratio`` bound what the archive may unpack to, counted as it is read (never
    taken from its headers): past either, the archive is refused as a decompression bomb and nothing of
    it stays. ``None`` keeps the default.
    """

    format: UnpackFormat = "auto"
    to: str | None = attrs.field(default=None, converter=_normalized_optional)
    max_size: int | None = None
    """Most bytes the archive may unpack to, a size such as ``"64GiB"`` or bytes. Default (``None``):
    64 GiB, above the single-archive checkpoints and datasets shipped today, yet reached long before a
    bomb fills a node's disk. Raise it for a larger archive you trust."""
    max_ratio: float | None = None
    """Most unpacked bytes per byte of archive, a number above 0. Default (``None``): 200. Archives of
    code, text and weights compress 2-20x; a 2 MB tar.gz that unpacks to 2 GiB is 1000x, which only a
    bomb (or a file of zeros) reaches. It stops a bomb after a few hundred times its size, whatever
    ``max_size`` and the disk allow."""


@attrs.frozen
class ObjectArtifact:
    """One object of a store, put at ``to`` on every node (``to`` ending in ``/``: inside that directory)."""

    store: str
    key: str
    to: str = attrs.field(converter=normalized_destination)
    """Normalized (see :func:`normalized_destination`); ending in ``/``: the directory to put the object in."""
    name: str | None = None
    sha256: str | None = None
    cache: bool = True
    unpack: Unpack | None = None
    nodes: Mapping[str, str] = attrs.field(factory=dict)
    """Only nodes whose Ray labels include all of these pairs get this artifact (default: every node)."""

    @property
    def display_name(self) -> str:
        return self.name or self.key

    @property
    def destination(self) -> str:
        """The file path on every node."""
        if self.to.endswith("/"):
            return self.to + PurePosixPath(self.key).name
        return self.to

    @property
    def unpack_destination(self) -> str | None:
        if self.unpack is None:
            return None
        if self.unpack.to is not None:
            return self.unpack.to
        destination = self.destination
        for suffix in ARCHIVE_SUFFIXES:
            if destination.endswith(suffix) and len(destination) > len(suffix):
                return destination[: -len(suffix)]
        return None  # validation asks for an explicit ``unpack.to`` here


@attrs.frozen
class PrefixArtifact:
    """Every object under ``prefix`` in a store, mirrored below the directory ``to`` on every node.

    ``include`` / ``exclude`` are globs matched against the path below the prefix (``*`` stays within
    one path segment, ``**`` spans segments; a pattern without ``/`` matches the file name anywhere).
    An object is taken when it matches some ``include`` (or ``include`` is empty) and no ``exclude``.
    """

    store: str
    prefix: str
    to: str = attrs.field(converter=normalized_destination)
    """The directory, normalized (see :func:`normalized_destination`)."""
    name: str | None = None
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    cache: bool = True
    nodes: Mapping[str, str] = attrs.field(factory=dict)
    """Only nodes whose Ray labels include all of these pairs get this artifact (default: every node)."""

    @property
    def display_name(self) -> str:
        return self.name or self.prefix.strip("/") or "(whole store)"


Artifact = ObjectArtifact | PrefixArtifact


@attrs.frozen(eq=False)
class Manifest:
    """What must be on every node: stores, artifacts and settings, as declared (plain, validated data).

    Load one with :meth:`load` / :meth:`loads`, or build one with :meth:`builder`; each returns an instance
    of the class it is called on, so ``xfd.Manifest.load(...)`` returns an :class:`xfd.Manifest`, which adds
    what can be done with a manifest (``plan()``, ``distribute()``, ``to_xenna()``).

    Every instance is valid: construction (``attrs.evolve`` included) runs :func:`xfd.manifest.validate.validate`
    and raises the :class:`~xfd.errors.ManifestError` that loading the same manifest from a file would.
    """

    stores: Mapping[str, Store] = attrs.field(factory=dict)
    artifacts: tuple[Artifact, ...] = ()
    settings: Settings = attrs.field(factory=Settings)
    source: str | None = attrs.field(default=None, eq=False, repr=False)
    """The file the manifest was loaded from, if any: named in error messages, and the place of the lock file."""

    def __attrs_post_init__(self) -> None:
        # The checks compare fields with each other (an artifact's store, two destinations), so they run on
        # the whole instance rather than as per-field validators; like those, they are off inside
        # ``attrs.validators.disabled()`` (tests that build what a user cannot, such as 2 KB chunks).
        from xfd.manifest.validate import validate  # it reads this module's classes

        if not attrs.validators.get_disabled() and (problems := validate(self)):
            raise ManifestError(problems, self.source)

    def __eq__(self, other: object) -> bool:
        """The same declaration is equal whatever its class: ``xfd.Manifest`` only adds verbs to this one."""
        if not isinstance(other, Manifest):
            return NotImplemented
        return (self.stores, self.artifacts, self.settings) == (other.stores, other.artifacts, other.settings)

    def __hash__(self) -> int:
        return hash((self.stores, self.artifacts, self.settings))

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Self:
        """Reads and validates a TOML manifest file."""
        from xfd.manifest.toml_format import load

        return load(path, cls)

    @classmethod
    def loads(cls, text: str, source: str | None = None) -> Self:
        """Parses and validates TOML text; ``source`` names it in error messages."""
        from xfd.manifest.toml_format import loads

        return loads(text, source, cls)

    def to_toml(self) -> str:
        """The manifest as TOML text; ``Manifest.loads(m.to_toml()) == m``."""
        from xfd.manifest.toml_format import dumps

        return dumps(self)

    @classmethod
    def builder(cls) -> ManifestBuilder[Self]:
        """A fluent builder: ``Manifest.builder().store(...).object(...).build()``."""
        from xfd.manifest.builder import ManifestBuilder

        return ManifestBuilder(manifest_class=cls)

    def __repr__(self) -> str:
        """One line; ``to_toml()`` and ``attrs.asdict`` give the whole manifest."""
        names = [a.display_name for a in self.artifacts]
        shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
        stores, artifacts = len(self.stores), len(names)
        return (
            f"<Manifest {stores} store{'s' * (stores != 1)}, {artifacts} artifact{'s' * (artifacts != 1)}"
            f"{': ' + shown if shown else ''}>"
        )


if TYPE_CHECKING:
    from xfd.manifest.builder import ManifestBuilder
