"""What xfd has put on the nodes, from Python: ``ls``, ``verify`` and ``prune`` across the cluster.

``from xfd import cache``, then::

    cache.ls()                                 # every node: destination, artifact, size, last used, state
    cache.verify()                             # every file re-hashed against its record, on every node
    cache.prune("artifacts.toml")              # dry run: what would go (what the manifest no longer names)
    cache.prune("artifacts.toml", dry_run=False)

Each node answers from its own node store (docs/cache.md): only what xfd published is listed, and prune
removes only files and trees that are still xfd's (never a file the user put in place of one, nor one the
user edited in place) and that no running distribution holds. Ray is reached as ``distribute()`` reaches
it (``address``, ``RAY_ADDRESS``, the running session); ``nodes`` chooses nodes as it does.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Iterable, Mapping
from typing import Any, ClassVar

import attrs

from xfd.errors import ConfigError
from xfd.formatting import counted, html_table, human_size
from xfd.manifest.model import Manifest, ObjectArtifact, PrefixArtifact

__all__ = [
    "CacheEntry",
    "CacheListing",
    "CachePrune",
    "CacheResult",
    "CacheVerification",
    "NodeCache",
    "ls",
    "prune",
    "verify",
]


def _time(ns: int | None) -> dt.datetime | None:
    return None if ns is None else dt.datetime.fromtimestamp(ns / 1e9, tz=dt.UTC)


@attrs.frozen
class CacheEntry:
    """One file or unpacked tree xfd published on one node.

    ``state``: ``intact`` (as xfd put it), ``touched`` (xfd's file, touched since: a run re-hashes it before
    use), ``missing`` (gone), ``replaced`` (something else is there now: the user's). ``held``: a running
    distribution holds it. ``artifact`` is ``None`` for files no run recorded yet (published by an xfd that
    did not keep it). A verify line adds ``outcome`` and ``detail``; a prune line ``action``, ``applied``
    and ``detail``.
    """

    node_ip: str
    node_id: str
    destination: str
    kind: str
    artifact: str | None
    size: int
    files: int
    published: dt.datetime | None
    last_used: dt.datetime | None
    state: str
    held: bool
    source: str
    outcome: str | None = None
    action: str | None = None
    applied: bool = False
    detail: str = ""

    @classmethod
    def _from(cls, node: Mapping[str, Any], line: Mapping[str, Any]) -> CacheEntry:
        item = line.get("item", line)
        identity = item.get("identity")
        if identity:
            version = identity.get("version") or identity.get("etag") or ""
            source = f"{identity['store_url'].rstrip('/')}/{identity['key']}" + (f" @ {version}" if version else "")
        else:
            source = f"unpacked from {item.get('unpacked_from') or '?'}"
        return cls(
            node_ip=node["ip"],
            node_id=node["node_id"],
            destination=item["destination"],
            kind=item["kind"],
            artifact=item["artifact"],
            size=item["size"],
            files=item["files"],
            published=_time(item["published_ns"]),
            last_used=_time(item["last_used_ns"]),
            state=item["state"],
            held=item["held"],
            source=source,
            outcome=line.get("outcome"),
            action=line.get("action"),
            applied=bool(line.get("applied", False)),
            detail=line.get("detail", ""),
        )


@attrs.frozen
class NodeCache:
    """One node's answer: its lines, or why it gave none."""

    node_id: str
    ip: str
    root: str
    entries: tuple[CacheEntry, ...]
    error: str | None = None


@attrs.frozen
class CacheResult:
    """What one cache command found on each node: ``nodes`` (their answers), ``entries`` (every line),
    ``summary()`` (a table), ``errors`` (the nodes that gave none)."""

    nodes: tuple[NodeCache, ...]
    _what: ClassVar[str] = ""

    @property
    def entries(self) -> tuple[CacheEntry, ...]:
        """Every node's lines, node by node."""
        return tuple(e for node in self.nodes for e in node.entries)

    @property
    def errors(self) -> dict[str, str]:
        """Node IP (or id) -> why it gave no answer."""
        return {n.ip or n.node_id: n.error for n in self.nodes if n.error}

    def _headline(self) -> str:
        raise NotImplementedError

    def _columns(self) -> tuple[str, ...]:
        return ("node", "destination", "artifact", "size", "last used", "state")

    def _row(self, e: CacheEntry) -> tuple[str, ...]:
        return (e.node_ip, e.destination, e.artifact or "-", _size(e), _when(e.last_used), _state(e))

    def summary(self) -> str:
        """The headline and one line per entry, as a table; then the nodes that gave no answer."""
        rows = [self._columns(), *(self._row(e) for e in self.entries)]
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines = [
            self._headline(),
            *("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows),
        ]
        lines += [f"{node}: no answer: {error}" for node, error in self.errors.items()]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()

    def __repr__(self) -> str:
        return f"<{type(self).__name__}: {self._headline()}>"

    def _repr_html_(self) -> str:
        return html_table(self._columns(), (self._row(e) for e in self.entries), caption=self._headline())


def _entries(count: int) -> str:
    return f"{count} {'entry' if count == 1 else 'entries'}"


def _size(e: CacheEntry) -> str:
    return human_size(e.size) + (f" ({counted(e.files, 'file')})" if e.kind == "tree" else "")


def _when(at: dt.datetime | None) -> str:
    return at.astimezone().strftime("%Y-%m-%d %H:%M") if at else "-"


def _state(e: CacheEntry) -> str:
    return e.state + (", held" if e.held else "")


@attrs.frozen(repr=False)
class CacheListing(CacheResult):
    """What :func:`ls` found: what xfd published on each node."""

    def _headline(self) -> str:
        size = human_size(sum(e.size for e in self.entries))
        return f"{_entries(len(self.entries))}, {size} on {counted(len(self.nodes), 'node')}"


@attrs.frozen(repr=False)
class CacheVerification(CacheResult):
    """What :func:`verify` found. ``problems``: what is not as xfd published it (corrupt, unreadable,
    missing); ``ok`` when there are none and every node answered."""

    @property
    def problems(self) -> tuple[CacheEntry, ...]:
        return tuple(e for e in self.entries if e.outcome in ("corrupt", "unreadable", "missing"))

    @property
    def ok(self) -> bool:
        return not self.problems and not self.errors

    def _headline(self) -> str:
        checked = sum(e.outcome == "ok" for e in self.entries)
        verdict = "ok" if self.ok else counted(len(self.problems), "problem")
        nodes = counted(len(self.nodes), "node")
        return f"{verdict}: {checked} of {_entries(len(self.entries))} verified on {nodes}"

    def _columns(self) -> tuple[str, ...]:
        return ("node", "destination", "artifact", "size", "outcome", "detail")

    def _row(self, e: CacheEntry) -> tuple[str, ...]:
        return (e.node_ip, e.destination, e.artifact or "-", _size(e), e.outcome or "-", e.detail)


@attrs.frozen(repr=False)
class CachePrune(CacheResult):
    """What :func:`prune` did, or in a dry run would do: one line per destination that no manifest names.

    ``action``: ``remove`` (xfd's file or tree, and its record), ``forget`` (the record only: nothing of
    xfd's is there any more), ``keep_held`` (a running distribution holds it), ``keep_modified`` (edited in
    place since xfd published it: the user's work), ``failed``."""

    dry_run: bool = True

    @property
    def removed(self) -> tuple[CacheEntry, ...]:
        """What was removed (in a dry run: what would be)."""
        return tuple(e for e in self.entries if e.action == "remove")

    def _headline(self) -> str:
        verb = "would remove" if self.dry_run else "removed"
        size = human_size(sum(e.size for e in self.removed))
        kept = sum(e.action in ("keep_held", "keep_modified") for e in self.entries)
        tail = " (dry run: pass dry_run=False, or --apply, to remove)" if self.dry_run else ""
        nodes = counted(len(self.nodes), "node")
        return f"{verb} {_entries(len(self.removed))}, {size} on {nodes}; {kept} left as they are{tail}"

    def _columns(self) -> tuple[str, ...]:
        return ("node", "destination", "artifact", "size", "action", "detail")

    def _row(self, e: CacheEntry) -> tuple[str, ...]:
        action = (e.action or "-") + ("" if e.applied or self.dry_run or e.action != "remove" else " (not done)")
        return (e.node_ip, e.destination, e.artifact or "-", _size(e), action, e.detail)


def _collect(results: Iterable[Mapping[str, Any]]) -> tuple[NodeCache, ...]:
    return tuple(
        NodeCache(
            node_id=r["node_id"],
            ip=r["ip"],
            root=r["root"],
            entries=tuple(CacheEntry._from(r, line) for line in r["lines"]),
            error=r["error"],
        )
        for r in results
    )


def ls(*, within: str | None = None, nodes: Any = None, address: str | None = None) -> CacheListing:
    """What xfd published on each chosen node (default: every alive node), at or below the destination
    ``within`` (default: everywhere)."""
    from xfd.runtime.cache import on_nodes

    return CacheListing(_collect(on_nodes("list", within=within, nodes=nodes, address=address)))


def verify(*, within: str | None = None, nodes: Any = None, address: str | None = None) -> CacheVerification:
    """Re-hashes every file xfd published on each chosen node (at or below ``within``) against its record:
    reads every byte."""
    from xfd.runtime.cache import on_nodes

    return CacheVerification(_collect(on_nodes("verify", within=within, nodes=nodes, address=address)))


def prune(
    *manifests: Manifest | str | os.PathLike[str],
    dry_run: bool = True,
    within: str | None = None,
    nodes: Any = None,
    address: str | None = None,
) -> CachePrune:
    """Removes what xfd published on the chosen nodes that none of ``manifests`` names; a dry run (the
    default) only says what would go.

    A manifest names its artifacts' declared destinations: an object's file, a prefix's directory (all
    below it), an unpack's directory. No store is contacted: what is below a prefix's directory is kept
    whatever the store lists now. ``within``: only destinations at or below it are looked at.
    """
    if not manifests:
        raise ConfigError("prune needs the manifests whose files to keep: prune('artifacts.toml') keeps what it names")
    files, dirs = keep_of(_loaded(m) for m in manifests)
    from xfd.runtime.cache import on_nodes

    results = on_nodes("prune", within=within, nodes=nodes, address=address, files=files, dirs=dirs, apply=not dry_run)
    return CachePrune(_collect(results), dry_run=dry_run)


def keep_of(manifests: Iterable[Manifest]) -> tuple[list[str], list[str]]:
    """The destinations ``manifests`` declare: exact files, and directories kept with all below them."""
    files: list[str] = []
    dirs: list[str] = []
    for manifest in manifests:
        for artifact in manifest.artifacts:
            if isinstance(artifact, ObjectArtifact):
                files.append(artifact.destination)
                if unpacked := artifact.unpack_destination:
                    dirs.append(unpacked)
            elif isinstance(artifact, PrefixArtifact):
                directory = artifact.to.rstrip("/")
                if not directory:
                    raise ConfigError(f"{artifact.display_name}: a prefix mirrored at / keeps every path")
                dirs.append(directory)
    return files, dirs


def _loaded(manifest: Manifest | str | os.PathLike[str]) -> Manifest:
    if isinstance(manifest, Manifest):
        return manifest
    return Manifest.load(manifest)
