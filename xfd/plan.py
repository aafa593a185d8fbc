"""COMPILE: Manifest -> Plan.

The plan is what the runtime executes: every object the manifest names, resolved against its store
(size, ETag, version), cut into chunks, deduplicated, with the files and unpack steps each node must
produce. Small objects are packed into bundles, so that thousands of small files travel as a few
transfers. It is plain, versioned, JSON-serializable data and deterministic: the same manifest against the
same store contents gives the same plan, byte for byte, on every machine.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
import re
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from html import escape
from typing import Any

import attrs
import cattrs

from xfd.errors import ConfigError, PlanError
from xfd.formatting import counted, html_table, human_size
from xfd.lockfile import check_lock, default_lock_path, write_lock
from xfd.manifest.globs import selected
from xfd.manifest.model import ChunkSize, Manifest, ObjectArtifact, Settings, Store
from xfd.manifest.stores import build_obstore, public_options

PLAN_FORMAT = "xfd.plan/1"
# HEAD and LIST requests in flight at once while compiling: enough to resolve thousands of objects in
# seconds, few enough to stay far below any store's request-rate limits.
RESOLVE_CONCURRENCY = 64
# The longest file name, in bytes, that Linux file systems (ext4, XFS, btrfs, ...) accept: a longer key segment
# would only fail at write time, on every node.
NAME_MAX = 255
# Bundles: objects of one chunk up to BUNDLE_MEMBER_MAX bytes travel together, up to BUNDLE_MAX_MEMBERS of them
# and BUNDLE_MAX_BYTES in all per bundle. A transfer costs a scheduling decision, a peer request and a record
# whatever its size: 100,000 files of 1 KiB are about 400 bundles instead of 100,000 transfers. The caps keep a
# bundle about the size of an ordinary chunk (16 MiB), so that it spreads between peers like one.
BUNDLE_MEMBER_MAX = 1 << 20
BUNDLE_MAX_MEMBERS = 256
BUNDLE_MAX_BYTES = 16 << 20
# A bundle is fetched from the origin by one node with `origin_chunk_streams` GETs in flight: latency-bound
# for small members. A group is cut into at least this many bundles (of at least BUNDLE_MIN_MEMBERS each)
# so that the origin's parallel fetches (4 bundles at once with the default settings) all have work, and
# so do the nodes: 200 small files in one bundle took three times the ideal in `xfd demo`.
BUNDLES_PER_GROUP = 8
BUNDLE_MIN_MEMBERS = 16


@attrs.frozen
class Chunk:
    """Bytes ``[offset, offset + length)`` of an object; ``id`` is stable across runs and machines."""

    id: str
    index: int
    offset: int
    length: int


@attrs.frozen
class PlanObject:
    """One object of one store, as it was when the plan was compiled."""

    id: str
    store: str
    key: str
    size: int
    etag: str | None
    version: str | None
    last_modified: str | None
    chunks: tuple[Chunk, ...]

    def __repr__(self) -> str:
        return f"<PlanObject {self.store}:{self.key}, {human_size(self.size)} in {counted(len(self.chunks), 'chunk')}>"


@attrs.frozen
class PlanFile:
    """An object written to ``destination`` (absolute, under each node's root) on every node."""

    object_id: str
    destination: str
    artifact: str
    sha256: str | None = None
    cache: bool = True
    nodes: Mapping[str, str] = attrs.field(factory=dict)
    """Ray labels a node must have to get this file; empty: every node."""

    def applies_to(self, labels: Mapping[str, str]) -> bool:
        return selector_matches(self.nodes, labels)


def selector_matches(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    """Whether a node with Ray ``labels`` is one an artifact's ``nodes`` selector names: it has every label
    of the selector with the same value (an empty selector names every node). The engine applies the same
    rule (``PlanFile::applies_to`` in rust/xfd-core/src/plan.rs)."""
    return all(labels.get(key) == value for key, value in selector.items())


@attrs.frozen
class PlanUnpack:
    """The archive at ``archive`` extracted into the directory ``to``."""

    object_id: str
    archive: str
    format: str
    to: str
    artifact: str
    max_size: int | None = None
    """The manifest's ``unpack.max_size`` in bytes; ``None``: the engine's default (64 GiB)."""
    max_ratio: float | None = None
    """The manifest's ``unpack.max_ratio``; ``None``: the engine's default (200)."""


@attrs.frozen
class PlanStore:
    """A store's URL and its non-secret options. Credentials never enter a plan: each node resolves
    them from the manifest's store definition and its own environment."""

    url: str
    options: Mapping[str, Any] = attrs.field(factory=dict)


@attrs.frozen
class PlanBundle:
    """Small objects that travel as one unit: fetched from the origin together (a GET per member) and sent
    between peers as one transfer. Its bytes are its members' bytes concatenated in member order; ``length``
    is their sum. Each member keeps its one chunk in the plan's ``objects``."""

    id: str
    length: int
    members: tuple[str, ...]
    """Object ids, in the order their bytes are concatenated."""


@attrs.frozen
class Plan:
    """The compiled, deterministic work of a distribution. See the module docstring."""

    settings: Settings
    stores: Mapping[str, PlanStore]
    objects: tuple[PlanObject, ...]
    files: tuple[PlanFile, ...]
    unpacks: tuple[PlanUnpack, ...] = ()
    bundles: tuple[PlanBundle, ...] = ()
    format: str = PLAN_FORMAT

    @property
    def unique_bytes(self) -> int:
        """Bytes that must come from the origin once: the sum of distinct objects' sizes."""
        return sum(o.size for o in self.objects)

    @property
    def chunk_count(self) -> int:
        """Chunks of all objects, bundled or not."""
        return sum(len(o.chunks) for o in self.objects)

    @property
    def unit_count(self) -> int:
        """Transfer units: chunks of the objects outside bundles, and bundles."""
        return len(self.unit_sizes)

    @functools.cached_property
    def unit_sizes(self) -> dict[str, int]:
        """What the scheduler and the progress count, unit id -> bytes: every chunk of every object outside
        bundles (in object order), then every bundle. Their bytes add up to :attr:`unique_bytes`."""
        bundled = self._bundle_of
        sizes = {c.id: c.length for o in self.objects if o.id not in bundled for c in o.chunks}
        sizes.update((b.id, b.length) for b in self.bundles)
        return sizes

    @functools.cached_property
    def _bundle_of(self) -> dict[str, str]:
        """Member object id -> its bundle's id."""
        return {member: bundle.id for bundle in self.bundles for member in bundle.members}

    def object(self, object_id: str) -> PlanObject:
        """The object ``object_id`` names: one dict lookup (the index is built on first use)."""
        try:
            return self._objects_by_id[object_id]
        except KeyError:
            raise KeyError(f"this plan has no object {object_id!r}") from None

    @functools.cached_property
    def _objects_by_id(self) -> dict[str, PlanObject]:
        # Built once per plan: looking up each file's object by scanning made a plan of n files cost
        # O(n^2) to summarize. The first object of an id wins, as it did with the scan.
        by_id: dict[str, PlanObject] = {}
        for plan_object in self.objects:
            by_id.setdefault(plan_object.id, plan_object)
        return by_id

    def chunks_for(self, labels: Mapping[str, str]) -> list[str]:
        """Unit ids (see :attr:`unit_sizes`) a node with these Ray labels needs: every unit when no artifact
        targets nodes. A bundle's members all go to the same nodes, so a node needs all of it or none."""
        wanted = {f.object_id for f in self.files if f.applies_to(labels)}
        bundled = self._bundle_of
        units = [c.id for o in self.objects if o.id in wanted and o.id not in bundled for c in o.chunks]
        units += [b.id for b in self.bundles if any(member in wanted for member in b.members)]
        return units

    def to_json(self, indent: int | None = None) -> str:
        return json.dumps(_CONVERTER.unstructure(self), indent=indent, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Plan:
        raw = json.loads(text)
        if raw.get("format") != PLAN_FORMAT:
            raise ConfigError(f"not an xfd plan of format {PLAN_FORMAT} (format: {raw.get('format')!r})")
        return _CONVERTER.structure(raw, cls)

    def summary(self) -> str:
        """A few lines for a terminal: artifacts, files, bytes, chunks."""
        per_artifact: dict[str, tuple[int, int]] = {}
        for file in self.files:
            count, size = per_artifact.get(file.artifact, (0, 0))
            per_artifact[file.artifact] = (count + 1, size + self.object(file.object_id).size)
        lines = [
            f"plan: {self._counts(len(per_artifact))} of up to "
            f"{human_size(max((c.length for o in self.objects for c in o.chunks), default=0))}{self._bundled()}"
        ]
        for name, (count, size) in sorted(per_artifact.items()):
            lines.append(f"  {name}: {counted(count, 'file')}, {human_size(size)}")
        lines += [f"  unpack {u.archive} -> {u.to} ({u.format})" for u in self.unpacks]
        return "\n".join(lines)

    def _counts(self, artifacts: int) -> str:
        return (
            f"{counted(artifacts, 'artifact')}, {counted(len(self.files), 'file')}, "
            f"{counted(len(self.objects), 'unique object')}, {human_size(self.unique_bytes)} unique, "
            f"{counted(self.chunk_count, 'chunk')}"
        )

    def _bundled(self) -> str:
        """``; 20000 small files packed into 79 bundles``, or nothing when the plan has no bundles."""
        if not self.bundles:
            return ""
        bundled = self._bundle_of
        files = sum(1 for f in self.files if f.object_id in bundled)
        return f"; {counted(files, 'small file')} packed into {counted(len(self.bundles), 'bundle')}"

    def __str__(self) -> str:
        return self.summary()

    def __repr__(self) -> str:
        """One line; :meth:`summary` has a line per artifact, :meth:`to_json` everything."""
        return f"<Plan {self._counts(len({f.artifact for f in self.files}))}{self._bundled()}>"

    def _repr_html_(self) -> str:
        """The notebook's view: the :meth:`summary` counts, then the first 200 files."""
        header = (
            f"<p><b>Plan</b>: {counted(len(self.files), 'file')}, {counted(len(self.objects), 'unique object')}, "
            f"{escape(human_size(self.unique_bytes))}, {counted(self.chunk_count, 'chunk')}{escape(self._bundled())}</p>"
        )
        shown = [(f, self.object(f.object_id)) for f in self.files[:200]]
        files = html_table(
            ["artifact", "destination", "size", "chunks"],
            [(f.artifact, f.destination, human_size(o.size), len(o.chunks)) for f, o in shown],
        )
        more = f"<p>... and {len(self.files) - 200} more files</p>" if len(self.files) > 200 else ""
        return f"<div class='xfd-plan'>{header}{files}{more}</div>"

    def write_lock(self, path: str) -> None:
        """Records every object's identity (size, ETag, version) so ``plan(locked=True)`` can insist on it."""
        write_lock(self, path)


_CONVERTER = cattrs.Converter(forbid_extra_keys=True)
# A plan is written by xfd from a validated manifest: its chunk size ("auto" or bytes) is taken as it is.
_CONVERTER.register_structure_hook_func(lambda t: t == ChunkSize, lambda value, _: value)


def compile_plan(manifest: Manifest, *, locked: bool = False, lock_path: str | None = None) -> Plan:
    """Resolves every artifact of ``manifest`` against its store and compiles the plan."""
    stores = {name: _open_store(name, store) for name, store in manifest.stores.items()}
    listings = _resolve_all(manifest, stores)
    plan = _assemble(manifest, listings)
    if locked:
        check_lock(plan, lock_path or default_lock_path(manifest))
    return plan


def _open_store(name: str, store: Store) -> Any:
    try:
        return build_obstore(store.url, store.options, where=f"stores.{name}")
    except ConfigError:
        raise
    except Exception as error:  # noqa: BLE001 - obstore raises a variety of builder errors
        raise PlanError(f"stores.{name}: cannot open {store.url}: {error}") from None


# --- resolving: HEAD objects, LIST prefixes, all at once ---------------------------------------------


@attrs.frozen
class _Found:
    key: str
    size: int
    etag: str | None
    version: str | None
    last_modified: str | None


def _resolve_all(manifest: Manifest, stores: Mapping[str, Any]) -> list[list[_Found]]:
    """Resolves every artifact, up to RESOLVE_CONCURRENCY at once, on threads joined before returning.

    Blocking obstore calls on threads of our own, not obstore's async API: an async call completes by having a
    tokio thread call the event loop's ``call_soon_threadsafe``, which can still be writing to the loop's wake-up
    socket after the loop has run the callback, finished and closed. If the interpreter is finalizing by then,
    that thread is killed inside Rust code and the process aborts (SIGABRT after printing a correct plan, about
    one `xfd plan` in ten). A blocking call touches Python only on the thread that made it. Being plain threads,
    this also works from a notebook cell, whose event loop is already running.
    """
    artifacts = manifest.artifacts
    pool = ThreadPoolExecutor(
        max_workers=max(1, min(RESOLVE_CONCURRENCY, len(artifacts))), thread_name_prefix="xfd-plan"
    )
    try:
        futures = [pool.submit(_resolve, index, a, manifest, stores[a.store]) for index, a in enumerate(artifacts)]
        results = [future.exception() or future.result() for future in futures]
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    problems = [str(r) for r in results if isinstance(r, PlanError)]
    if unexpected := [r for r in results if isinstance(r, BaseException) and not isinstance(r, PlanError)]:
        raise unexpected[0]
    if problems:
        raise PlanError(
            problems[0]
            if len(problems) == 1
            else f"{len(problems)} artifacts cannot be resolved:\n" + "\n".join(f"  {p}" for p in problems)
        )
    return results  # type: ignore[return-value]


def _resolve(index: int, artifact: Any, manifest: Manifest, store: Any) -> list[_Found]:
    import obstore

    where = f"artifacts[{index}] ({artifact.display_name})"
    location = manifest.stores[artifact.store].url.rstrip("/")
    try:
        if isinstance(artifact, ObjectArtifact):
            return [_found(obstore.head(store, artifact.key))]
        prefix = artifact.prefix.strip("/")
        listed = obstore.list(store, prefix=prefix or None).collect()
    except Exception as error:  # noqa: BLE001 - mapped to a message below
        raise PlanError(_store_error_message(where, location, artifact, error)) from None
    found = _without_directory_markers([_found(meta) for meta in listed if not meta["path"].endswith("/")], prefix)
    chosen = [f for f in found if selected(_relative(f.key, prefix), artifact.include, artifact.exclude)]
    if not chosen:
        what = "no objects" if not found else f"none of the {len(found)} objects match include/exclude"
        raise PlanError(f"{where}: {what} under {location}/{prefix}; check the prefix and the globs")
    return sorted(chosen, key=lambda f: f.key)


def _found(meta: Mapping[str, Any]) -> _Found:
    modified = meta.get("last_modified")
    return _Found(
        key=meta["path"],
        size=int(meta["size"]),
        etag=meta.get("e_tag"),
        version=meta.get("version"),
        last_modified=modified.isoformat() if modified is not None else None,
    )


def _without_directory_markers(found: list[_Found], prefix: str) -> list[_Found]:
    """Drops S3 "folders": zero-byte objects named ``dir/``, which obstore lists without their slash, as ``dir``.

    Dropped: the prefix's own marker (``prefix/``), and every zero-byte entry whose key is also the directory of
    another key or is listed twice (``x`` and ``x/``): on a node a path is a file or a directory, not both, and a
    marker holds no bytes. A lone marker of an empty folder cannot be told from an empty object; it stays a file.
    """
    by_key: dict[str, _Found] = {}
    for item in found:
        if item.key != prefix and (item.key not in by_key or item.size > by_key[item.key].size):
            by_key[item.key] = item
    directories = _directories(by_key)
    return [item for item in by_key.values() if not (item.size == 0 and item.key in directories)]


def _directories(keys: Iterable[str]) -> set[str]:
    """Every directory above ``keys`` (``a/b/c`` -> ``a/b``, ``a``). A key's walk up stops at a directory
    already found, whose own parents are in by then: linear in the keys, and without a ``PurePosixPath``
    per key (a second per 100,000 keys)."""
    directories: set[str] = set()
    for key in keys:
        cut = key.rfind("/")
        while cut > 0 and (parent := key[:cut]) not in directories:
            directories.add(parent)
            cut = key.rfind("/", 0, cut)
    return directories


def _store_error_message(where: str, location: str, artifact: Any, error: Exception) -> str:
    import obstore.exceptions as errors

    target = f"{location}/{artifact.key}" if isinstance(artifact, ObjectArtifact) else f"{location}/{artifact.prefix}"
    if isinstance(error, (errors.NotFoundError, FileNotFoundError)):
        return f"{where}: {target} does not exist; check the key and the store URL"
    if isinstance(error, (errors.PermissionDeniedError, errors.UnauthenticatedError, PermissionError)):
        return f"{where}: access to {target} was denied; check the credentials of store {artifact.store!r}"
    first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    if "BadScheme" in str(error):
        # object_store speaks only HTTPS unless allowed; the HTTP client then refuses an http:// URL with a bare
        # "builder error" (its debug source names BadScheme). The endpoint may come from the environment.
        endpoint = re.search(r"http://[^\s/]+", first_line)
        return (
            f"{where}: cannot read {target}: {endpoint[0] if endpoint else 'the endpoint'} is plain HTTP, which "
            f"the store refuses unless allowed; set allow_http = true in [stores.{artifact.store}] "
            "(or use https://)"
        )
    if "invalid path" in first_line:
        # object_store refuses keys with '..', '.' or empty segments, or control characters: they could not land
        # safely anyway. The key may hold a line break: the message shows it escaped, and whole.
        detail = str(error).split("\n\nDebug source:")[0].strip()
        detail = "".join(c if c.isprintable() else repr(c)[1:-1] for c in detail)
        return (
            f"{where}: {target} holds a key that cannot be mapped to a file safely ({detail}); "
            "rename or remove that object, or narrow the prefix"
        )
    return f"{where}: cannot read {target}: {first_line}"


def _relative(key: str, prefix: str) -> str:
    return key[len(prefix) + 1 :] if prefix else key


# --- assembling: dedupe, chunk, map to destinations --------------------------------------------------


def _assemble(manifest: Manifest, listings: list[list[_Found]]) -> Plan:
    objects: dict[tuple[str, str], PlanObject] = {}
    files: dict[str, PlanFile] = {}
    unpacks: list[PlanUnpack] = []
    for index, (artifact, found) in enumerate(zip(manifest.artifacts, listings, strict=True)):
        for item in found:
            plan_object = _plan_object(manifest, artifact.store, item, objects)
            destination = _destination(index, artifact, item)
            _add_file(
                files,
                PlanFile(
                    object_id=plan_object.id,
                    destination=destination,
                    artifact=artifact.display_name,
                    sha256=artifact.sha256 if isinstance(artifact, ObjectArtifact) else None,
                    cache=artifact.cache,
                    nodes=dict(artifact.nodes),
                ),
            )
            if isinstance(artifact, ObjectArtifact) and artifact.unpack is not None:
                unpacks.append(
                    PlanUnpack(
                        plan_object.id,
                        destination,
                        artifact.unpack.format,
                        artifact.unpack_destination or "",
                        artifact.display_name,
                        artifact.unpack.max_size,
                        artifact.unpack.max_ratio,
                    )
                )
    _check_nesting(files)
    stores = {
        name: PlanStore(url=store.url, options=public_options(store.options))
        for name, store in sorted(manifest.stores.items())
    }
    return Plan(
        settings=manifest.settings,
        stores=stores,
        objects=tuple(sorted(objects.values(), key=lambda o: o.id)),
        files=tuple(sorted(files.values(), key=lambda f: f.destination)),
        unpacks=tuple(unpacks),
        bundles=_bundles(objects.values(), files.values()),
    )


def _plan_object(
    manifest: Manifest, store_name: str, item: _Found, objects: dict[tuple[str, str], PlanObject]
) -> PlanObject:
    store = manifest.stores[store_name]
    location = f"{store.url.rstrip('/')}|{store.options.get('endpoint', '')}"
    if (location, item.key) in objects:
        return objects[(location, item.key)]
    identity = "\0".join([location, item.key, item.etag or "", item.version or "", str(item.size)])
    object_id = _digest(identity)
    chunk_size = manifest.settings.chunk_size_for(item.size)
    chunks = tuple(
        Chunk(
            id=_digest(f"{identity}\0{chunk_size}\0{i}"),
            index=i,
            offset=offset,
            length=min(chunk_size, item.size - offset),
        )
        for i, offset in enumerate(range(0, item.size, chunk_size))
    )
    plan_object = PlanObject(
        object_id, store_name, item.key, item.size, item.etag, item.version, item.last_modified, chunks
    )
    objects[(location, item.key)] = plan_object
    return plan_object


def _bundles(objects: Iterable[PlanObject], files: Iterable[PlanFile]) -> tuple[PlanBundle, ...]:
    """Packs the small objects (one chunk, 1 byte to BUNDLE_MEMBER_MAX) into bundles, sorted by id.

    Objects are grouped by store and by the node selectors of the files that use them, so that every node needs
    all of a bundle or none of it; each group, sorted by key, is cut into consecutive runs within the caps. A run
    of one object stays an ordinary object: a bundle of one would only rename its chunk.
    """
    selectors: dict[str, set[tuple[tuple[str, str], ...]]] = {}
    for file in files:
        selector = tuple(sorted(file.nodes.items())) if file.nodes else ()
        selectors.setdefault(file.object_id, set()).add(selector)
    groups: dict[tuple[str, tuple[tuple[tuple[str, str], ...], ...]], list[PlanObject]] = {}
    for plan_object in objects:
        if _bundleable(plan_object):
            group = (plan_object.store, tuple(sorted(selectors.get(plan_object.id, ()))))
            groups.setdefault(group, []).append(plan_object)
    bundles = [
        _bundle(run)
        for members in groups.values()
        for run in _runs(sorted(members, key=lambda o: (o.key, o.id)), _members_per_bundle(len(members)))
        if len(run) > 1
    ]
    return tuple(sorted(bundles, key=lambda b: b.id))


def _bundleable(plan_object: PlanObject) -> bool:
    chunks = plan_object.chunks
    return (
        1 <= plan_object.size <= BUNDLE_MEMBER_MAX
        and len(chunks) == 1
        and chunks[0].offset == 0
        and chunks[0].length == plan_object.size
    )


def _members_per_bundle(group: int) -> int:
    """Members per bundle for a group of ``group`` small objects: BUNDLES_PER_GROUP bundles, within
    [BUNDLE_MIN_MEMBERS, BUNDLE_MAX_MEMBERS] members each."""
    return min(BUNDLE_MAX_MEMBERS, max(BUNDLE_MIN_MEMBERS, -(-group // BUNDLES_PER_GROUP)))


def _runs(members: list[PlanObject], most: int) -> Iterable[list[PlanObject]]:
    """Consecutive runs of ``members``: a run takes the next member while it has fewer than ``most`` and stays
    within BUNDLE_MAX_BYTES with it."""
    run: list[PlanObject] = []
    length = 0
    for member in members:
        if run and (len(run) >= most or length + member.size > BUNDLE_MAX_BYTES):
            yield run
            run, length = [], 0
        run.append(member)
        length += member.size
    if run:
        yield run


def _bundle(members: list[PlanObject]) -> PlanBundle:
    # The members' chunk ids name their bytes (store, key, ETag, version, size): the bundle's id changes
    # exactly when one member or the membership does.
    return PlanBundle(
        id=_digest("bundle\0" + "\0".join(m.chunks[0].id for m in members)),
        length=sum(m.size for m in members),
        members=tuple(m.id for m in members),
    )


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _destination(index: int, artifact: Any, item: _Found) -> str:
    if isinstance(artifact, ObjectArtifact):
        return artifact.destination
    relative = _relative(item.key, artifact.prefix.strip("/"))
    segments = relative.split("/")
    if any(s in ("", ".", "..") for s in segments) or "\x00" in relative:
        raise PlanError(
            f"artifacts[{index}] ({artifact.display_name}): key {item.key!r} would not land inside "
            f"{artifact.to} (empty, '.' or '..' path segments); rename the object or exclude it"
        )
    if too_long := [s for s in segments if len(s.encode()) > NAME_MAX]:
        raise PlanError(
            f"artifacts[{index}] ({artifact.display_name}): key {item.key!r} has a name of "
            f"{len(too_long[0].encode())} bytes, and file systems take at most {NAME_MAX}; "
            "rename the object or exclude it"
        )
    return artifact.to.rstrip("/") + "/" + relative


def _add_file(files: dict[str, PlanFile], new: PlanFile) -> None:
    """Adds ``new``; a second artifact writing the very same file (same object, sha256, cache and nodes) is
    deliberately kept as one file (manifests composed of parts, prefixes that overlap); anything else at
    one path is refused, as one of the two would silently not be written."""
    existing = files.get(new.destination)
    if existing is None:
        files[new.destination] = new
    elif existing.object_id != new.object_id:
        raise PlanError(
            f"{new.destination} is the destination of two different objects "
            f"(artifacts {existing.artifact!r} and {new.artifact!r}); give them different paths"
        )
    elif differ := [f for f in ("sha256", "cache", "nodes") if getattr(existing, f) != getattr(new, f)]:
        raise PlanError(
            f"{new.destination} is written by artifacts {existing.artifact!r} and {new.artifact!r} "
            f"with different {' and '.join(differ)}; make them agree or give them different paths"
        )


def _check_nesting(files: Mapping[str, PlanFile]) -> None:
    """A file cannot also be a directory holding another file.

    Sort and sweep: sorted by their segments, the paths below a file come right after it (sorted as
    text they would not: ``/d/a b`` and ``/d/a.txt`` sort between ``/d/a`` and ``/d/a/x``), so comparing
    neighbours finds every conflict, and the first one in that order is the one reported.
    """
    ordered = sorted((path.split("/"), path) for path in files)
    for (_, parent), (_, path) in itertools.pairwise(ordered):
        if path.startswith(parent + "/"):
            raise PlanError(
                f"{parent} is a file of artifact {files[parent].artifact!r} and also a "
                f"directory holding {path} (artifact {files[path].artifact!r})"
            )
