# Type stub of the Rust extension module built from rust/xfd-py (mirrors rust/xfd-py/src/lib.rs).
import os
from typing import Any, final

__all__ = [
    "Coordinator",
    "Engine",
    "Scheduler",
    "__version__",
    "cache_list",
    "cache_prune",
    "cache_verify",
    "hash_file_range",
]

__version__: str

def hash_file_range(path: str | os.PathLike[str], offset: int = 0, length: int | None = None) -> str:
    """BLAKE3 hex digest of ``length`` bytes of ``path`` from ``offset`` (``None``: to the end of the file).

    The GIL is released while the file is read.

    Raises:
        FileNotFoundError, PermissionError, OSError: the file cannot be opened or read.
        xfd.errors.RangeError: the range does not lie inside the file.
    """

def cache_list(
    state_dir: str | os.PathLike[str], node_root: str | os.PathLike[str], within: str | None = None
) -> list[dict[str, Any]]:
    """Every file and unpacked tree xfd published on this node at or below ``within`` (a destination as
    manifests name it; ``None``: everywhere), from the node store in ``state_dir`` (an empty list when
    there is none: nothing is created). One dict each: ``destination`` (below
    ``node_root``), ``path``, ``kind`` (``file`` / ``tree``), ``artifact``, ``identity``,
    ``unpacked_from``, ``size``, ``files``, ``published_ns``, ``last_used_ns``, ``state`` (``intact`` /
    ``touched`` / ``missing`` / ``replaced``), ``held``. The GIL is released."""

def cache_verify(
    state_dir: str | os.PathLike[str], node_root: str | os.PathLike[str], within: str | None = None, threads: int = 4
) -> list[dict[str, Any]]:
    """:func:`cache_list`, each file re-hashed against its record: ``{"item", "outcome", "detail"}`` with
    ``outcome`` ``ok`` / ``corrupt`` / ``missing`` / ``replaced`` / ``unverifiable`` / ``unreadable``."""

def cache_prune(
    state_dir: str | os.PathLike[str],
    node_root: str | os.PathLike[str],
    files: list[str],
    dirs: list[str],
    apply: bool = False,
    within: str | None = None,
) -> list[dict[str, Any]]:
    """Removes (``apply``) or lists what would go: what xfd published here, at or below ``within``, that
    ``files`` (exact destinations) and ``dirs`` (directories, everything below them) do not keep, and that
    is still xfd's.
    ``{"item", "action", "applied", "detail"}`` per destination not kept, ``action`` ``remove`` /
    ``forget`` / ``keep_held`` / ``keep_modified`` / ``failed``."""
@final
class Coordinator:
    """A run's coordinator (mirrors rust/xfd-py/src/coordinator.rs): a control server the agents link to,
    and the scheduler on a thread of its own. Statuses are plain dicts: ``outcome`` (``None``, or
    ``{"outcome": "finished"}`` / ``{"outcome": "stalled", "reason": ...}``), ``snapshot`` (nodes and units
    by index), ``nodes`` (node ids by index), ``finished_at``, ``deliveries``, ``origin_refetches``,
    ``failures``, ``origin_bytes`` (by node id), ``frames_in``, ``frames_out``."""

    def __new__(
        cls,
        units: list[tuple[str, int]],
        unique_bytes: int,
        token: str,
        bind: str,
        expected: list[str],
        *,
        origin_parallelism: int,
        origin_chunk_streams: int,
        download_slots: int,
        upload_slots: int,
        lost_after: float = 30.0,
        snapshot_every: float = 0.25,
        with_chunks: bool = False,
        origin_hold: float = 3.0,
    ) -> Coordinator:
        """Starts the control server on ``bind`` (an IP; the port is chosen) and the coordinator thread.
        The run is not over before every node of ``expected`` joined or was given up on. Transfers from
        the origin wait until every expected node joined, or ``origin_hold`` seconds after the first did
        (a node still starting may hold in its cache what an early one would fetch)."""
    @property
    def address(self) -> tuple[str, int]:
        """``(host, port)`` of the control server."""
    def join(self, name: str, address: str, needs: list[str], held: list[tuple[str, str]]) -> None:
        """A node's agent is up: it serves peers at ``address`` (``ip:port``), needs ``needs``, holds
        ``held`` (unit, digest)."""
    def add_failed(self, name: str, ip: str, reason: str, lost: bool) -> None:
        """A node that takes no part: lost (its agent died) or failed (its engine refused the run)."""
    def lose(self, name: str, reason: str) -> None:
        """A node is gone (its agent's actor died)."""
    def set_state(self, name: str, state: str, reason: str) -> None:
        """``done``, ``failed`` or ``lost``, after the transfers (the unpack's outcome)."""
    def wait(self, timeout: float) -> dict[str, Any]:
        """Waits up to ``timeout`` seconds for the outcome; returns the status then."""
    def status(self) -> dict[str, Any]:
        """The latest status."""
    def end(self) -> dict[str, Any]:
        """Ends the run (every link is told) and returns the final status."""

@final
class Engine:
    """The engine of one node for one plan (mirrors rust/xfd-py/src/engine.rs).

    Every method releases the GIL; results and events are plain dicts. Events have a ``kind`` of
    ``chunk_started``, ``chunk_done``, ``chunk_failed``, ``file_published`` or ``unpacked`` (fields in
    docs/engine.md, "Events"); a ``chunk_failed`` event's ``error_kind`` is ``fatal``, ``integrity``,
    ``peer``, ``origin``, ``busy`` or ``stalled``. Once :meth:`link` is called, outcomes go to the
    coordinator instead and no event is queued.
    """

    def __new__(
        cls,
        plan_json: str,
        node_root: str | os.PathLike[str],
        stores: dict[str, tuple[str, list[tuple[str, str]]]],
        *,
        peer_token: str | None = None,
        deep_verify: bool = False,
        faults: str = "",
        node_labels: dict[str, str] | None = None,
        state_dir: str | os.PathLike[str] | None = None,
    ) -> Engine:
        """``node_labels``: this node's Ray labels; files whose ``nodes`` selector they do not match are
        skipped. ``faults`` is fault injection for the system tests (``point:action[@n]`` rules, see
        docs/reliability.md); empty otherwise. ``state_dir`` is the node store's directory (records of
        the published files, resume records, destination locks; see docs/engine.md); ``None``:
        ``~/.cache/xfd`` under ``node_root`` (:func:`xfd.engine.state_dir` applies ``XFD_STATE_DIR``)."""
    def scan(self) -> dict[str, Any]:
        """Finds cache hits and resumable chunks: ``{"held": {chunk_id: digest}, "cached_files", "resumed_chunks"}``."""
    def fetch_from_origin(self, chunk_id: str) -> dict[str, Any]:
        """Fetches one chunk from the origin into its part file, blocking until done."""
    def submit_origin(self, chunk_ids: list[str]) -> None:
        """Starts fetching these chunks from the origin in the background; outcomes arrive as events."""
    def fetch_from_peer(
        self, chunk_id: str, host: str, port: int, expected_digest: str | None = None
    ) -> dict[str, Any]:
        """Fetches one chunk from the peer at ``host:port``, verified against ``expected_digest``."""
    def submit_peer(self, transfers: list[tuple[str, str, int, str | None]]) -> None:
        """Starts ``(chunk_id, host, port, expected_digest)`` peer fetches in the background."""
    def link(self, host: str, port: int, token: str, node: str, heartbeat: float = 1.0) -> None:
        """Opens this node's control link to the coordinator at ``host:port`` (in the background): work
        arrives over it and outcomes go back over it from then on. It ends with the run or the engine."""
    def start_server(
        self, bind: str, port: int = 0, *, upload_slots: int, egress_bytes_per_sec: int | None = None
    ) -> tuple[str, int]:
        """Serves this node's verified chunks to peers; returns the ``(host, port)`` peers must use.
        ``egress_bytes_per_sec`` caps the server's outbound rate (``None``: the plan's ``upload_rate``, where
        0 is uncapped; docs/rate-caps.md)."""
    def stop_server(self, grace: float = 5.0) -> None:
        """Stops the peer server, letting in-flight uploads finish for up to ``grace`` seconds."""
    def cancel(self, grace: float = 10.0) -> None:
        """Ends every background transfer (``submit_*``) and waits up to ``grace`` seconds until they are gone."""
    def close(self, grace: float = 10.0) -> None:
        """Ends the run on this node: cancels background transfers (as :meth:`cancel`), then lets go of
        the part files and destination locks, so the next run on this node can start at once."""
    def server_stats(self) -> dict[str, Any] | None:
        """The peer server's counters, or ``None`` when it is not running."""
    def finish(
        self, *, max_total_bytes: int | None = None, max_entries: int | None = None, overwrite: bool | None = None
    ) -> list[dict[str, Any]]:
        """Runs the plan's unpacks on this node; ``overwrite=None`` takes the plan's ``settings.overwrite``."""
    def drain_events(self) -> list[dict[str, Any]]:
        """Every event since the last call, oldest first."""
    def wait_events(self, timeout: float) -> list[dict[str, Any]]:
        """Waits up to ``timeout`` seconds for at least one event, then returns them all."""
    def is_complete(self) -> bool:
        """Whether every file of the plan is published on this node."""
    @property
    def origin_bytes(self) -> int:
        """Object bytes received from the origin so far, every attempt included (what the origin served)."""
    @property
    def served_chunks(self) -> int:
        """Number of verified chunks this node can serve to peers."""

_Transfer = tuple[int, int, int | None, bool]

@final
class Scheduler:
    """The transfer scheduler over dense chunk and node indices (mirrors rust/xfd-py/src/scheduler.rs).

    Transfers are ``(chunk, node, source or None for the origin, duplicate)``; ``xfd.scheduler.Scheduler``
    wraps this class with names.
    """

    def __new__(
        cls,
        chunks: int,
        nodes: int,
        *,
        origin_parallelism: int,
        download_slots: int,
        upload_slots: int,
        needs: list[list[int]] | None = None,
        sample_size: int = 64,
        scan_budget: int = 16,
        max_penalties: int = 2,
        endgame: bool = True,
        seed: int = 0,
    ) -> Scheduler: ...
    def held(self, node: int, chunks: list[int]) -> None: ...
    def finished(self, transfer: _Transfer) -> list[_Transfer]: ...
    def failed(self, transfer: _Transfer, kind: str, reason: str) -> None: ...
    def node_lost(self, node: int) -> list[_Transfer]: ...
    def next_transfers(self) -> list[_Transfer]: ...
    def active(self) -> list[_Transfer]: ...
    def failed_chunks(self) -> dict[int, str]: ...
    def failure(self, chunk: int) -> str | None: ...
    def lost_nodes(self) -> list[int]: ...
    def holders(self, chunk: int) -> list[int]: ...
    def node_stats(self, node: int) -> tuple[int, int, int, int, int, int]:
        """``(downloads, uploads, origin_fetches, penalties, wanting, inflight)``."""
    def alive(self, node: int) -> bool: ...
    def node_done(self, node: int) -> bool: ...
    @property
    def done(self) -> bool: ...
    @property
    def origin_busy(self) -> int: ...
    @property
    def origin_refetches(self) -> int: ...
