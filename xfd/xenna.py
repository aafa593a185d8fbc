"""Cosmos-Xenna adapter: Xenna's ``download_requests`` run on xfd, and xfd manifests handed to Xenna.

Xenna stages declare their files as ``cosmos_xenna.file_distribution.DownloadRequest`` values, with
credentials in an ``ObjectStoreConfig`` (or one per profile) and tuning in a ``DistributedDownloadConfig``.
This module maps all of that onto a :class:`~xfd.Manifest` and back:

- :func:`from_xenna` - requests and store configs -> a validated Manifest;
- :func:`download_distributed` - a drop-in for ``cosmos_xenna.file_distribution.download_distributed``;
- :func:`download_for_stages` - what Xenna's pipeline does before it starts, on xfd;
- :func:`to_xenna` (also ``Manifest.to_xenna()``) - a Manifest -> requests + config for Xenna stages.

The mapping table and a migration guide are in ``docs/xenna.md``. Reading Xenna objects needs only their
attributes; building them (:func:`to_xenna`) imports ``cosmos_xenna``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs

from xfd.engine import resolved_options
from xfd.errors import ManifestError, XfdError
from xfd.manifest.model import AUTO_CHUNK_MAX, Manifest, ObjectArtifact, PrefixArtifact, Settings

if TYPE_CHECKING:
    from xfd.report import Report

log = logging.getLogger("xfd.xenna")

SOURCE = "xenna requests"
"""How errors name what they were converted from."""

DEFAULT_PROFILE_STORE = "default"
"""The store name of Xenna's default profile (``profile_name=None``)."""

_UNPACK_FORMATS = {"auto": "auto", "tar": "tar", "tar.gz": "tar.gz", "zip": "zip"}
"""Xenna's ``UnpackMethod`` values -> xfd unpack formats (the same words)."""


class XennaAdapterError(XfdError, ValueError):
    """A Xenna input xfd cannot carry out faithfully; the message says what and how to proceed."""


@attrs.frozen
class XennaRequests:
    """What :func:`to_xenna` gives a Xenna pipeline: each stage's ``download_requests`` and the config."""

    download_requests: list[Any]
    config: Any
    """A ``cosmos_xenna.pipelines.v1.DistributedDownloadConfig``."""


# ---------------------------------------------------------------------------------------------------
# Xenna -> xfd


def from_xenna(
    requests: Iterable[Any],
    object_store_config: Any,
    *,
    chunk_size_bytes: int | None = None,
    node_parallelism: int | None = None,
    object_store_parallelism: int | None = None,
    object_store_retry_config: Any = None,
    overwrite: bool = False,
) -> Manifest:
    """The Manifest that does what ``download_distributed(requests, object_store_config, ...)`` asks.

    ``requests``: ``DownloadRequest`` values (or the bare ``ObjectDownloadRequest`` /
    ``PrefixDownloadRequest`` they wrap). ``object_store_config``: an ``ObjectStoreConfig`` (the default
    profile) or an ``ObjectStoreConfigByProfile``. Each profile becomes a store (the default profile is
    named ``default``); requests repeated with the same key, destination and unpack destination become one
    artifact. ``None`` for a tuning value means xfd's default (see ``docs/xenna.md``). Every problem is
    raised at once as a :class:`~xfd.ManifestError` whose paths name the Xenna inputs.
    """
    profiles = _profiles(object_store_config)
    stores = {profile: _store_name(profile, profiles) for profile in profiles}
    unique = _deduplicated([_unwrap(r, i) for i, r in enumerate(requests)], profiles)
    problems = _unknown_profiles(unique, profiles)
    known = [(index, request) for index, request in unique if request.profile_name in profiles]
    builder = Manifest.builder()
    for profile, config in profiles.items():
        builder = builder.store(stores[profile], config.uri, **dict(config.config_args))
    for _, request in known:
        builder = _add_request(builder, request, stores)
    builder = builder.settings(**_settings(chunk_size_bytes, node_parallelism, object_store_parallelism,
                                           object_store_retry_config, overwrite))
    try:
        manifest = builder.build()
    except ManifestError as error:
        problems = sorted(problems + _xenna_paths(error.problems, known, stores), key=_input_order)
        raise ManifestError(problems, SOURCE) from None
    if problems:
        raise ManifestError(problems, SOURCE)
    return manifest


def download_distributed(
    download_requests: list[Any],
    object_store_config: Any,
    chunk_size_bytes: int | None = None,
    node_parallelism: int | None = None,
    object_store_parallelism: int = 100,
    p2p_retry_config: Any = None,
    object_store_retry_config: Any = None,
    verbose: bool = False,
    testing_info: Any = None,
    display_rate_s: float = 5.0,
    *,
    overwrite: bool = False,
    progress: Any = "auto",
) -> Report:
    """Drop-in for ``cosmos_xenna.file_distribution.download_distributed``, run by xfd.

    Same arguments, same meaning: every request lands on every node of the running Ray cluster (Ray must
    be initialized, as for Xenna). Differences, all deliberate (``docs/xenna.md``): it returns xfd's
    :class:`~xfd.report.Report` instead of ``None``; a failed run raises :class:`~xfd.errors.DistributionError`
    carrying that report; files at destinations that xfd did not write are kept and reported unless
    ``overwrite=True``; ``p2p_retry_config`` is accepted but xfd re-routes a failed peer transfer to another
    holder or the origin instead of retrying one peer; ``display_rate_s`` is accepted and xfd's progress is
    live (``progress`` as in :meth:`xfd.Manifest.distribute`); ``testing_info`` (fake nodes on one
    machine) is refused: use :class:`xfd.runtime.LocalCluster` for simulated nodes.
    """
    import ray

    del p2p_retry_config, display_rate_s  # accepted for drop-in compatibility; see the docstring
    if testing_info is not None:
        raise XennaAdapterError(
            "testing_info (fake nodes inside one Ray node) is not supported by xfd: simulate nodes with "
            "xfd.runtime.LocalCluster (one raylet and one root directory per node) and call this without it"
        )
    if not ray.is_initialized():
        raise XennaAdapterError("Ray is not initialized: call ray.init() (or ray.init(address=...)) first, "
                                "as for Xenna's download_distributed")
    manifest = from_xenna(download_requests, object_store_config, chunk_size_bytes=chunk_size_bytes,
                          node_parallelism=node_parallelism, object_store_parallelism=object_store_parallelism,
                          object_store_retry_config=object_store_retry_config, overwrite=overwrite)
    return _distribute(manifest, verbose, progress)


def download_for_stages(stages: Sequence[Any], config: Any, *, overwrite: bool = False,
                        progress: Any = "auto") -> Report | None:
    """Collects ``download_requests`` from Xenna stages (``Stage`` or ``StageSpec``), dedupes them and
    puts them on every node, as Xenna's pipeline does before it starts. ``config`` is a
    ``DistributedDownloadConfig``. Returns the report, or ``None`` when no stage asks for anything.
    Connects to Ray (``RAY_ADDRESS``, or a new local instance) if it is not initialized.
    """
    from xfd.runtime.distribute import ensure_ray

    requests = [request for stage in stages for request in (_stage_of(stage).download_requests or [])]
    if not requests:
        log.info("no stage has download_requests; nothing to distribute")
        return None
    ensure_ray()
    manifest = from_xenna(requests, config.object_store_config, chunk_size_bytes=config.chunk_size_bytes,
                          node_parallelism=config.node_parallelism,
                          object_store_parallelism=config.object_store_parallelism, overwrite=overwrite)
    return _distribute(manifest, config.verbose, progress)


def _distribute(manifest: Manifest, verbose: bool, progress: Any) -> Report:
    """Runs ``manifest``; a failed run raises, as Xenna's download does, so no pipeline starts without it."""
    if verbose:
        logging.getLogger("xfd").setLevel(logging.DEBUG)
    return manifest.distribute(progress=progress)  # a failed run raises DistributionError


def _stage_of(item: Any) -> Any:
    if hasattr(item, "download_requests"):
        return item
    if hasattr(getattr(item, "stage", None), "download_requests"):
        return item.stage
    raise XennaAdapterError(f"not a Xenna Stage or StageSpec (no download_requests): {item!r:.80}")


def _profiles(object_store_config: Any) -> dict[str | None, Any]:
    if hasattr(object_store_config, "profiles"):
        profiles = dict(object_store_config.profiles)
    elif hasattr(object_store_config, "uri") and hasattr(object_store_config, "config_args"):
        profiles = {None: object_store_config}
    else:
        raise XennaAdapterError("object_store_config must be an ObjectStoreConfig or ObjectStoreConfigByProfile "
                                f"(got {type(object_store_config).__name__})")
    if not profiles:
        raise XennaAdapterError("object_store_config has no profiles: add at least one ObjectStoreConfig")
    return profiles


def _store_name(profile: str | None, profiles: Mapping[str | None, Any]) -> str:
    if profile is not None:
        return profile
    # The default profile is "default" unless a named profile already is; never two stores with one name.
    return DEFAULT_PROFILE_STORE if DEFAULT_PROFILE_STORE not in profiles else "xenna-default-profile"


def _unwrap(request: Any, index: int) -> Any:
    value = getattr(request, "value", request)
    if not (hasattr(value, "uri") and hasattr(value, "destination") and hasattr(value, "profile_name")):
        raise XennaAdapterError(f"download_requests[{index}]: not an ObjectDownloadRequest or "
                                f"PrefixDownloadRequest: {value!r:.80}")
    return value


def _is_prefix(request: Any) -> bool:
    # PrefixDownloadRequest has `cache` and no `unpack_options`; ObjectDownloadRequest the reverse.
    return not hasattr(request, "unpack_options")


def _dedupe_key(request: Any) -> tuple[str, str, str | None]:
    """Xenna's own dedupe key: uri, destination and unpack destination (profile, cache, method aside)."""
    unpack = getattr(request, "unpack_options", None)
    return (request.uri, str(request.destination), str(unpack.unpack_destination) if unpack else None)


def _deduplicated(requests: list[Any], profiles: Mapping[str | None, Any]) -> list[tuple[int, Any]]:
    """Requests with Xenna's dedupe key merged, each with its original index.

    Xenna keeps the first of such requests whatever their profiles and unpack methods; xfd merges only
    requests that mean the same download and refuses the others, which would silently fetch from another
    bucket or unpack differently. ``cache`` differing is merged to ``False`` (the safe side).
    """
    kept: dict[tuple[str, str, str | None], tuple[int, Any]] = {}
    for index, request in enumerate(requests):
        key = _dedupe_key(request)
        if key not in kept:
            kept[key] = (index, request)
            continue
        first_index, first = kept[key]
        if conflict := _conflict(first, request, profiles):
            raise XennaAdapterError(
                f"download_requests[{index}] repeats download_requests[{first_index}] (uri {request.uri!r} to "
                f"{request.destination}) but {conflict}: make them agree or give them different destinations"
            )
        if _is_prefix(first) and first.cache and not request.cache:
            kept[key] = (first_index, attrs.evolve(first, cache=False))
        log.info("dropping download_requests[%d], a repeat of download_requests[%d]", index, first_index)
    return sorted(kept.values(), key=lambda pair: pair[0])


def _conflict(first: Any, other: Any, profiles: Mapping[str | None, Any]) -> str | None:
    if _is_prefix(first) != _is_prefix(other):
        return "one is a prefix request and the other an object request"
    if first.profile_name != other.profile_name:
        a, b = profiles.get(first.profile_name), profiles.get(other.profile_name)
        if a is None or b is None or (a.uri, dict(a.config_args)) != (b.uri, dict(b.config_args)):
            return f"their profiles differ ({first.profile_name!r} vs {other.profile_name!r})"
    first_unpack, other_unpack = getattr(first, "unpack_options", None), getattr(other, "unpack_options", None)
    if first_unpack and other_unpack and first_unpack.unpack_method != other_unpack.unpack_method:
        return f"their unpack methods differ ({first_unpack.unpack_method} vs {other_unpack.unpack_method})"
    return None


def _add_request(builder: Any, request: Any, stores: Mapping[str | None, str]) -> Any:
    store = stores[request.profile_name]
    to = str(request.destination)
    if _is_prefix(request):
        return builder.prefix(store, request.uri, to=to, cache=request.cache)
    builder = builder.object(store, request.uri, to=to)
    if request.unpack_options is None:
        return builder
    method = getattr(request.unpack_options.unpack_method, "value", request.unpack_options.unpack_method)
    return builder.unpack(_UNPACK_FORMATS.get(method, method), to=str(request.unpack_options.unpack_destination))


def _settings(chunk_size_bytes: int | None, node_parallelism: int | None, object_store_parallelism: int | None,
              retry: Any, overwrite: bool) -> dict[str, Any]:
    settings: dict[str, Any] = {"chunk_size": chunk_size_bytes, "node_parallelism": node_parallelism,
                                "origin_parallelism": object_store_parallelism, "overwrite": overwrite or None}
    if object_store_parallelism is not None and object_store_parallelism < Settings().origin_chunk_streams:
        settings["origin_chunk_streams"] = max(1, object_store_parallelism)  # never more GETs than allowed
    if retry is not None:
        # Xenna's num_retries counts retries after the first try; its delay doubles from base_delay_millis.
        settings["origin_attempts"] = retry.num_retries + 1
        settings["origin_backoff"] = retry.base_delay_millis / 1000
    return {k: v for k, v in settings.items() if v is not None}


def _unknown_profiles(requests: list[tuple[int, Any]], profiles: Mapping[str | None, Any]) -> list[tuple[str, str]]:
    known = ", ".join(repr(p) for p in profiles)
    return [(f"download_requests[{index}].value.profile_name",
             f"no profile {request.profile_name!r} in object_store_config (profiles: {known})")
            for index, request in requests if request.profile_name not in profiles]


_ARTIFACT_FIELDS = {"to": "destination", "key": "uri", "prefix": "uri", "store": "profile_name",
                    "unpack.to": "unpack_options.unpack_destination", "unpack.format": "unpack_options.unpack_method",
                    "unpack": "unpack_options"}
_SETTINGS_FIELDS = {"chunk_size": "chunk_size_bytes", "node_parallelism": "node_parallelism",
                    "origin_parallelism": "object_store_parallelism",
                    "origin_attempts": "object_store_retry_config.num_retries",
                    "origin_backoff": "object_store_retry_config.base_delay_millis"}


def _input_order(problem: tuple[str, str]) -> tuple[int, int]:
    """Store configs first, then requests by index, then tuning values: the order of the inputs."""
    path = problem[0]
    if path.startswith("download_requests["):
        return 1, int(path[len("download_requests["):path.index("]")])
    return (0, 0) if path.startswith("object_store_config") else (2, 0)


def _xenna_paths(problems: list[tuple[str, str]], requests: list[tuple[int, Any]],
                 stores: Mapping[str | None, str]) -> list[tuple[str, str]]:
    """Rewrites manifest paths (``artifacts[3].to``) as the Xenna inputs they came from."""
    profile_of = {name: profile for profile, name in stores.items()}
    return [(_xenna_path(path, requests, profile_of), message) for path, message in problems]


def _xenna_path(path: str, requests: list[tuple[int, Any]], profile_of: Mapping[str, str | None]) -> str:
    head, _, rest = path.partition(".")
    if head.startswith("artifacts["):
        index = requests[int(head[len("artifacts["):-1])][0]
        return f"download_requests[{index}].value" + (f".{_ARTIFACT_FIELDS.get(rest, rest)}" if rest else "")
    if head == "stores":
        name, _, option = rest.partition(".")
        where = f"object_store_config.profiles[{profile_of.get(name, name)!r}]"
        return where + (".uri" if option == "url" else f".config_args[{option!r}]" if option else "")
    if head == "settings":
        return _SETTINGS_FIELDS.get(rest, rest)
    return path


# ---------------------------------------------------------------------------------------------------
# xfd -> Xenna


def to_xenna(manifest: Manifest, environ: Mapping[str, str] | None = None) -> XennaRequests:
    """Xenna ``download_requests`` and a ``DistributedDownloadConfig`` that download what ``manifest`` says.

    Stores become profiles (``default`` becomes the default profile when there is one); ``${VAR}``
    templates are resolved now, from ``environ`` (default: this process's environment), because Xenna
    has none. Raises :class:`XennaAdapterError` for what Xenna cannot express (include/exclude globs,
    sha256 checks, node selectors, uncached objects, non-default upload slots or overwrite) rather than
    hand Xenna a weaker download.
    """
    from cosmos_xenna import file_distribution as fd
    from cosmos_xenna.pipelines import v1 as pipelines

    _refuse_unmappable(manifest)
    profile_of = {name: (None if name == DEFAULT_PROFILE_STORE else name) for name in manifest.stores}
    profiles = {profile_of[name]: fd.ObjectStoreConfig(uri=store.url, config_args=resolved_options(name, store, environ))
                for name, store in manifest.stores.items()}
    requests = [fd.DownloadRequest(value=_request(fd, artifact, profile_of[artifact.store]))
                for artifact in manifest.artifacts]
    settings = manifest.settings
    config = pipelines.DistributedDownloadConfig(
        object_store_config=fd.ObjectStoreConfigByProfile(profiles=profiles),
        # Xenna has one chunk size for every file: "auto" gives it the size xfd uses for large files.
        chunk_size_bytes=AUTO_CHUNK_MAX if settings.chunk_size == "auto" else settings.chunk_size,
        node_parallelism=settings.node_parallelism,
        object_store_parallelism=settings.origin_parallelism,
    )
    return XennaRequests(requests, config)


def _request(fd: Any, artifact: ObjectArtifact | PrefixArtifact, profile: str | None) -> Any:
    if isinstance(artifact, PrefixArtifact):
        return fd.PrefixDownloadRequest(uri=artifact.prefix, destination=Path(artifact.to),
                                        cache=artifact.cache, profile_name=profile)
    unpack = None
    if artifact.unpack is not None:
        method = fd.UnpackMethod("tar.gz" if artifact.unpack.format == "tgz" else artifact.unpack.format)
        unpack = fd.UnpackOptions(unpack_destination=Path(artifact.unpack_destination or ""), unpack_method=method)
    return fd.ObjectDownloadRequest(uri=artifact.key, destination=Path(artifact.destination),
                                    unpack_options=unpack, profile_name=profile)


def _refuse_unmappable(manifest: Manifest) -> None:
    problems: list[tuple[str, str]] = []
    for index, artifact in enumerate(manifest.artifacts):
        path = f"artifacts[{index}]"
        if isinstance(artifact, PrefixArtifact) and (artifact.include or artifact.exclude):
            problems.append((path, "include/exclude globs have no Xenna equivalent (Xenna takes a whole prefix)"))
        if isinstance(artifact, ObjectArtifact) and artifact.sha256:
            problems.append((f"{path}.sha256", "Xenna cannot verify a sha256; drop it to hand this to Xenna"))
        if isinstance(artifact, ObjectArtifact) and not artifact.cache:
            problems.append((f"{path}.cache", "Xenna always caches single objects; cache = false has no equivalent"))
        if artifact.nodes:
            problems.append((f"{path}.nodes", "Xenna puts every request on every node; node selectors have no "
                                              "equivalent"))
        for limit in ("max_size", "max_ratio"):
            if isinstance(artifact, ObjectArtifact) and artifact.unpack and getattr(artifact.unpack, limit) is not None:
                problems.append((f"{path}.unpack.{limit}", "Xenna sets no limits on unpacking; leave it at its default "
                                                           "to hand this manifest to Xenna"))
    defaults = Settings()
    for field in ("upload_slots", "overwrite", "origin_chunk_streams", "origin_attempts", "origin_backoff", "origin_max_backoff",
                  "origin_timeout", "disk_reserve"):
        if getattr(manifest.settings, field) != getattr(defaults, field):
            problems.append((f"settings.{field}", "has no Xenna DistributedDownloadConfig equivalent; leave it at "
                                                  "its default to hand this manifest to Xenna"))
    if problems:
        raise XennaAdapterError(ManifestError(problems, manifest.source or "manifest").args[0])


__all__ = ["XennaAdapterError", "XennaRequests", "download_distributed", "download_for_stages", "from_xenna",
           "to_xenna"]
