"""Semantic checks of a manifest: every problem at once, each with the path of the offending value."""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, NamedTuple
from urllib.parse import urlsplit

import attrs

from xfd.manifest.model import UNPACK_FORMATS, ObjectArtifact, PrefixArtifact, Settings, Store
from xfd.manifest.stores import SCHEMES, allowed_options, scheme_of, template_problem
from xfd.manifest.units import format_rate

if TYPE_CHECKING:
    from xfd.manifest.model import Manifest

Problem = tuple[str, str]
MiB, GiB = 1 << 20, 1 << 30
_STORE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def did_you_mean(word: str, candidates: Iterable[str]) -> str:
    """``"; did you mean 'x'?"`` for the closest candidate, or ``""`` when none is close."""
    close = difflib.get_close_matches(word, sorted(candidates), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def validate(manifest: Manifest) -> list[Problem]:
    """Every problem of a fully structured manifest, in the order of its file (see :func:`in_document_order`).

    :class:`~xfd.manifest.model.Manifest` runs it on construction, so ``attrs.evolve`` cannot build an
    invalid manifest either."""
    problems = validate_parts(manifest.settings, manifest.stores, list(enumerate(manifest.artifacts)))
    return in_document_order(problems, [field.name for field in attrs.fields(Settings)])


def validate_parts(
    settings: Settings,
    stores: Mapping[str, Store],
    indexed_artifacts: list[tuple[int, ObjectArtifact | PrefixArtifact]],
    unread_settings: Collection[str] = (),
) -> list[Problem]:
    """Problems of the parts of a manifest that could be structured; ``indexed_artifacts`` keep the index
    they have in the file, so paths stay right when some artifacts failed to structure, and
    ``unread_settings`` name the settings that could not be read (already reported; their defaults stand in)."""
    problems = list(settings_problems(settings, unread_settings))
    for name, store in stores.items():
        problems += store_problems(name, store)
    for index, artifact in indexed_artifacts:
        problems += artifact_problems(f"artifacts[{index}]", artifact, stores)
    problems += cross_artifact_problems(indexed_artifacts)
    return problems


def in_document_order(problems: list[Problem], settings_keys: Sequence[str]) -> list[Problem]:
    """Problems in the order of the file: unknown top-level keys, settings by key (``settings_keys``, as the
    file lists them), stores, artifacts by index; problems of one place keep their order."""

    def order(problem: Problem) -> tuple[int, int]:
        head, _, rest = problem[0].partition(".")
        section = head.split("[")[0]
        rank = {"settings": 1, "stores": 2, "artifacts": 3}.get(section, 0)
        if head.startswith("artifacts["):
            return rank, int(head[len(section) + 1 : -1])
        if section == "settings":
            key = rest.split(".")[0]
            return rank, settings_keys.index(key) if key in settings_keys else len(settings_keys)
        return rank, -1

    return sorted(problems, key=order)


def settings_problems(settings: Settings, unread: Collection[str] = ()) -> Iterator[Problem]:
    """Problems of the settings. A default is always valid, so only checks that compare two settings need to
    skip the ``unread`` ones (a value that could not be read must not make its neighbour look wrong)."""
    if settings.chunk_size != "auto" and not 1 * MiB <= settings.chunk_size <= 4 * GiB:
        yield "settings.chunk_size", f'must be between 1MiB and 4GiB, or "auto" (got {settings.chunk_size} bytes)'
    for field, upper in (("node_parallelism", 1024), ("upload_slots", 1024), ("origin_parallelism", 100_000)):
        value = getattr(settings, field)
        if not 1 <= value <= upper:
            yield f"settings.{field}", f"must be between 1 and {upper} (got {value})"
    streams_ok = 1 <= settings.origin_chunk_streams <= min(64, settings.origin_parallelism)
    if not streams_ok and "origin_parallelism" not in unread:
        yield (
            "settings.origin_chunk_streams",
            (f"must be between 1 and min(64, origin_parallelism) (got {settings.origin_chunk_streams})"),
        )
    if not 1 <= settings.origin_attempts <= 100:
        yield "settings.origin_attempts", f"must be between 1 and 100 (got {settings.origin_attempts})"
    for field in ("origin_backoff", "origin_max_backoff", "origin_timeout"):
        value = getattr(settings, field)
        if not 0 < value <= 86_400:
            yield f"settings.{field}", f"must be a number of seconds above 0 and at most one day (got {value})"
    if settings.origin_backoff > settings.origin_max_backoff and "origin_max_backoff" not in unread:
        yield (
            "settings.origin_backoff",
            (f"must not exceed origin_max_backoff ({settings.origin_backoff} > {settings.origin_max_backoff})"),
        )
    if settings.disk_reserve < 0:
        yield (
            "settings.disk_reserve",
            f"must be a size of 0 bytes or more, such as 1GiB (got {settings.disk_reserve} bytes)",
        )
    yield from _rate_problems(settings, unread)


PEER_MIN_THROUGHPUT = 2 * MiB
"""Bytes per second below which a peer transfer is taken for stalled (``min_throughput_bytes_per_sec`` of
the peer client, ``rust/xfd-core/src/p2p/client.rs``): a capped server must give each upload slot more."""


def _rate_problems(settings: Settings, unread: Collection[str]) -> Iterator[Problem]:
    for field in ("origin_rate", "upload_rate"):
        if getattr(settings, field) < 0:
            yield (
                f"settings.{field}",
                f"must be a rate of 0 (uncapped) or more, such as 200MB/s (got {getattr(settings, field)} bytes per second)",
            )
    if settings.origin_request_rate < 0:
        yield (
            "settings.origin_request_rate",
            f"must be a number of GET requests per second, 0 (uncapped) or more (got {settings.origin_request_rate})",
        )
    floor = settings.upload_slots * PEER_MIN_THROUGHPUT
    if 0 < settings.upload_rate < floor and "upload_slots" not in unread:
        slots = settings.upload_rate // PEER_MIN_THROUGHPUT
        fewer = f", or lower upload_slots to {slots}" if slots else ""
        yield (
            "settings.upload_rate",
            (
                f"gives each of the {settings.upload_slots} upload slots less than 2MiB/s, the pace below which "
                f"peers take a transfer for stalled; raise it to at least {floor // MiB}MiB/s{fewer} "
                f"(got {format_rate(settings.upload_rate)})"
            ),
        )


def store_problems(name: str, store: Store) -> Iterator[Problem]:
    path = f"stores.{name}"
    if not _STORE_NAME.match(name):
        yield path, "a store name may hold letters, digits, '_', '.' and '-' only"
    yield from _url_problems(f"{path}.url", store.url)
    try:
        scheme = scheme_of(store.url)
    except ValueError:  # not a URL at all; _url_problems said so
        scheme = ""
    allowed = allowed_options(scheme)
    for key, value in store.options.items():
        if key not in allowed and scheme in SCHEMES:
            hint = did_you_mean(key, allowed) or (
                f"; options of {scheme}:// stores: {', '.join(sorted(allowed))}"
                if allowed
                else f"; {scheme}:// stores take no options"
            )
            yield f"{path}.{key}", f"unknown option{hint}"
        elif isinstance(value, str) and (why := template_problem(value)):
            yield f"{path}.{key}", why


def _url_problems(path: str, url: str) -> Iterator[Problem]:
    try:
        parts = urlsplit(url)
    except ValueError as error:  # such as "Invalid IPv6 URL" for s3://[bucket
        yield path, f"must be a valid URL (got {url!r}: {error})"
        return
    scheme = parts.scheme.lower()
    if scheme not in SCHEMES:
        yield path, f"must be a URL starting with one of {', '.join(s + '://' for s in SCHEMES)} (got {url!r})"
    elif scheme in ("s3", "gs", "az", "http", "https") and not parts.netloc:
        what = "host" if scheme.startswith("http") else "bucket"
        yield path, f"must name a {what}, as in {scheme}://{what}/optional/prefix (got {url!r})"
    elif scheme == "file" and (parts.netloc or not parts.path.startswith("/")):
        yield path, f"must be file:///absolute/directory (got {url!r})"


def artifact_problems(
    path: str, artifact: ObjectArtifact | PrefixArtifact, stores: Mapping[str, Store]
) -> Iterator[Problem]:
    if artifact.store not in stores:
        known = ", ".join(sorted(stores)) or "none are defined"
        yield (
            f"{path}.store",
            (f"no store named {artifact.store!r}{did_you_mean(artifact.store, stores)} (stores: {known})"),
        )
    yield from _destination_problems(f"{path}.to", artifact.to)
    if isinstance(artifact, ObjectArtifact):
        yield from _object_problems(path, artifact)
    else:
        yield from _prefix_problems(path, artifact)


def _destination_problems(path: str, destination: str) -> Iterator[Problem]:
    posix = PurePosixPath(destination)
    if not posix.is_absolute():
        yield path, f"must be an absolute path such as /data/file (got {destination!r})"
    elif ".." in posix.parts or "\x00" in destination:
        yield path, f"must not contain '..' segments or NUL bytes (got {destination!r})"
    elif posix == PurePosixPath("/"):
        yield path, "must not be the root directory itself"


def _object_problems(path: str, artifact: ObjectArtifact) -> Iterator[Problem]:
    if not artifact.key or artifact.key.endswith("/") or artifact.key.startswith("/"):
        yield (
            f"{path}.key",
            (
                f"must be an object key such as dir/file.bin, without leading or trailing '/' (got {artifact.key!r});"
                " for every object under a prefix use prefix = ..."
            ),
        )
    if artifact.sha256 is not None and not _SHA256.match(artifact.sha256):
        yield f"{path}.sha256", "must be 64 lower-case hexadecimal digits"
    if artifact.unpack is None:
        return
    unpack = artifact.unpack
    if unpack.format not in UNPACK_FORMATS:
        yield f"{path}.unpack.format", f"must be one of {', '.join(UNPACK_FORMATS)} (got {unpack.format!r})"
    if unpack.max_size is not None and unpack.max_size < 1:
        yield f"{path}.unpack.max_size", f"must be a size above 0 bytes, such as 64GiB (got {unpack.max_size} bytes)"
    if unpack.max_ratio is not None and not (math.isfinite(unpack.max_ratio) and unpack.max_ratio > 0):
        yield f"{path}.unpack.max_ratio", f"must be a finite number above 0, such as 200 (got {unpack.max_ratio})"
    target = artifact.unpack_destination
    if target is None:
        yield f"{path}.unpack.to", "required when the destination does not end in .tar, .tar.gz, .tgz or .zip"
        return
    problems = list(_destination_problems(f"{path}.unpack.to", target))
    yield from problems
    if not problems and _is_within(artifact.destination, target):
        yield f"{path}.unpack.to", f"must not contain the archive itself ({artifact.destination})"
    elif not problems and _is_within(target, artifact.destination):
        yield (
            f"{path}.unpack.to",
            f"must not lie inside the archive itself ({artifact.destination}): a path cannot be both a file and a directory",
        )


def _prefix_problems(path: str, artifact: PrefixArtifact) -> Iterator[Problem]:
    if artifact.prefix.startswith("/"):
        yield f"{path}.prefix", f"must be relative to the store URL, without a leading '/' (got {artifact.prefix!r})"
    for field in ("include", "exclude"):
        for index, pattern in enumerate(getattr(artifact, field)):
            if not pattern or pattern.startswith("/"):
                yield f"{path}.{field}[{index}]", "must be a non-empty glob relative to the prefix"


def cross_artifact_problems(
    indexed_artifacts: list[tuple[int, ObjectArtifact | PrefixArtifact]],
) -> Iterator[Problem]:
    """Names used twice, and outputs of two artifacts that overlap, each reported at the later artifact."""
    names: dict[str, int] = {}
    for index, artifact in indexed_artifacts:
        if artifact.name is not None:
            if artifact.name in names:
                yield (
                    f"artifacts[{index}].name",
                    f"{artifact.name!r} is already the name of artifacts[{names[artifact.name]}]",
                )
            names.setdefault(artifact.name, index)
    outputs = list(_outputs(indexed_artifacts))
    yield from _shared_files(indexed_artifacts)
    yield from _files_used_as_directories(outputs)
    yield from _unpack_overlaps(outputs)


class _Output(NamedTuple):
    """Where one artifact writes: a ``file``, the ``tree`` of an unpack, or the ``directory`` of a prefix."""

    artifact: int
    field: str
    path: PurePosixPath
    kind: str

    @property
    def described(self) -> str:
        what = {"file": "destination", "tree": "unpack directory", "directory": "directory"}[self.kind]
        return f"the {what} of artifacts[{self.artifact}]"


def _outputs(indexed_artifacts: list[tuple[int, ObjectArtifact | PrefixArtifact]]) -> Iterator[_Output]:
    """Outputs with a valid destination (the others are refused on their own and cannot overlap anything)."""
    for index, artifact in indexed_artifacts:
        if isinstance(artifact, PrefixArtifact):
            if _valid(artifact.to):
                yield _Output(index, "to", PurePosixPath(artifact.to), "directory")
            continue
        if _valid(artifact.to):
            yield _Output(index, "to", PurePosixPath(artifact.destination), "file")
        tree = artifact.unpack_destination
        if tree is not None and _valid(tree):
            yield _Output(index, "unpack.to", PurePosixPath(tree), "tree")


def _valid(destination: str) -> bool:
    return not any(_destination_problems("", destination))


_FILE_FIELDS = ("store", "key", "sha256", "cache", "nodes")


def _shared_files(indexed_artifacts: list[tuple[int, ObjectArtifact | PrefixArtifact]]) -> Iterator[Problem]:
    """Two objects at one path. The same object with the same options is written once (the plan keeps one
    file), so composed manifests may repeat an artifact; anything else would leave one of them unwritten."""
    first: dict[str, tuple[int, ObjectArtifact]] = {}
    for index, artifact in indexed_artifacts:
        if not isinstance(artifact, ObjectArtifact) or not _valid(artifact.to):
            continue
        earlier, other = first.setdefault(artifact.destination, (index, artifact))
        differ = [f for f in _FILE_FIELDS if getattr(other, f) != getattr(artifact, f)]
        if earlier == index or not differ:
            continue
        if "store" in differ or "key" in differ:
            what, fix = "a different object", "choose a different to"
        else:
            what, fix = (
                f"the same object with another {' and '.join(differ)}",
                "make them agree or choose a different to",
            )
        yield (
            f"artifacts[{index}].to",
            f"{artifact.destination} is also the destination of artifacts[{earlier}], {what}; {fix}",
        )


def _files_used_as_directories(outputs: list[_Output]) -> Iterator[Problem]:
    """A path is a file or a directory, not both: no file or prefix directory at or inside another artifact's
    file (trees are checked by :func:`_unpack_overlaps`, a tree inside its own archive with its artifact)."""
    files = {o.path: o for o in outputs if o.kind == "file"}
    for output in outputs:
        if output.kind == "tree":
            continue
        for path in [output.path, *output.path.parents] if output.kind == "directory" else output.path.parents:
            file = files.get(path)
            if file is None or file.artifact == output.artifact:
                continue
            if output.artifact > file.artifact:
                later = output
                where = "is also" if path == output.path else f"lies inside {file.path},"
                relation = f"{output.path} {where} {file.described}"
            else:
                later = file
                relation = (
                    f"{file.path} is also {output.described}"
                    if path == output.path
                    else f"{output.path}, {output.described}, would lie inside the file {file.path}"
                )
            yield (
                f"artifacts[{later.artifact}].{later.field}",
                f"{relation}: a path cannot be both a file and a directory; choose a different {later.field}",
            )


def _unpack_overlaps(outputs: list[_Output]) -> Iterator[Problem]:
    """An unpack tree belongs to its archive alone: unpacking replaces it whole, so anything else written in it
    (or a tree around it, or a tree of another archive) would be deleted or would delete it."""
    trees = [o for o in outputs if o.kind == "tree"]
    for tree in trees:
        for other in outputs:
            if other.artifact == tree.artifact or (other.kind == "tree" and other.artifact < tree.artifact):
                continue  # the own archive is checked with its artifact; a pair of trees once
            if not (_is_within(other.path, tree.path) or _is_within(tree.path, other.path)):
                continue
            later, earlier = (tree, other) if tree.artifact > other.artifact else (other, tree)
            if later.path == earlier.path:
                relation = f"{later.path} is also {earlier.described}"
            elif _is_within(later.path, earlier.path):
                relation = f"{later.path} lies inside {earlier.path}, {earlier.described}"
            else:
                relation = f"{later.path} contains {earlier.path}, {earlier.described}"
            if other.kind == "file" and tree.path != other.path and _is_within(tree.path, other.path):
                why = "a path cannot be both a file and a directory"
            else:
                why = "an unpack directory belongs to its archive alone (unpacking replaces it whole)"
            yield f"artifacts[{later.artifact}].{later.field}", f"{relation}: {why}; choose a different {later.field}"


def _is_within(path: str | PurePosixPath, directory: str | PurePosixPath) -> bool:
    return PurePosixPath(path).is_relative_to(PurePosixPath(directory))
