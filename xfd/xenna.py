"""Cosmos-Xenna adapter: a Xenna pipeline's downloads run by xfd, and xfd manifests handed to Xenna.

Xenna stages declare their files as ``cosmos_xenna.file_distribution.DownloadRequest`` values, with
credentials in an ``ObjectStoreConfig`` (or one per profile) and tuning in a ``DistributedDownloadConfig``.
``run_pipeline`` and ``BackgroundArtifactDownloader`` collect every stage's requests, dedupe them and hand
them to ``cosmos_xenna.file_distribution.download_distributed``. This module:

- :func:`use_xfd` (or :func:`install` / :func:`uninstall`) - the switch: while it is on, that function is
  xfd's, so every Xenna path downloads with xfd, once, after Xenna's own collection and dedupe;
- :func:`download_distributed` - the drop-in itself: Xenna's parameters, Xenna's meaning, xfd's engine;
- :func:`download_for_stages` - Xenna's ``download_artifacts`` run on xfd, returning the report;
- :func:`from_xenna` - requests and store configs -> a validated Manifest;
- :func:`to_xenna` (also ``Manifest.to_xenna()``) - a Manifest -> requests + config for Xenna stages.

Every field and behaviour of Xenna's requests, configs and ``download_distributed``, and what xfd does
with it, is in the fidelity table of ``docs/xenna.md``. Reading Xenna objects needs only their
attributes; the switch, :func:`download_for_stages` and :func:`to_xenna` import ``cosmos_xenna``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Iterable, Iterator, Mapping
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import attrs

from xfd.api import Manifest
from xfd.engine import resolved_options
from xfd.errors import DistributionError, ManifestError, PlanError, XfdError
from xfd.manifest.model import AUTO_CHUNK_MAX, ObjectArtifact, PrefixArtifact, Settings
from xfd.manifest.stores import CLIENT_OPTIONS, STORE_OPTIONS

if TYPE_CHECKING:
    from xfd.report import Report

log = logging.getLogger("xfd.xenna")

SOURCE = "xenna requests"
"""How errors name what they were converted from."""

DEFAULT_PROFILE_STORE = "default"
"""The store name of Xenna's default profile (``profile_name=None``)."""

MiB, GiB = 1 << 20, 1 << 30
XENNA_CHUNK_SIZE = 100 * MiB
"""What Xenna's ``download_distributed`` uses for ``chunk_size_bytes=None``."""
XENNA_RETRIES, XENNA_BASE_DELAY_MS = 5, 200
"""Xenna's ``RetryConfig()``: what ``object_store_retry_config=None`` means, and all a pipeline ever uses
(``download_artifacts`` passes none)."""
CHUNK_MIN, CHUNK_MAX = 1 * MiB, 4 * GiB
"""xfd's chunk sizes; a Xenna size outside is moved to the nearest bound (same files, another unit)."""
NODE_PARALLELISM_MAX = 1024
XENNA_OBJECT_STORE_PARALLELISM = 100
"""Xenna's default for ``object_store_parallelism`` (its ``download_distributed`` and its pipelines')."""

_UNPACK_FORMATS = {"auto": "auto", "tar": "tar", "tar.gz": "tar.gz", "zip": "zip"}
"""Xenna's ``UnpackMethod`` values -> xfd unpack formats (the same words)."""

# --- option names and schemes: everything the object_store crate (behind obstore and Xenna) accepts ---

_SCHEMES = {
    "s3": "s3",
    "s3a": "s3",
    "gs": "gs",
    "az": "az",
    "azure": "az",
    "adl": "az",
    "abfs": "az",
    "abfss": "az",
    "file": "file",
    "memory": "memory",
    "http": "http",
    "https": "https",
}
"""URL schemes obstore's ``from_url`` reads (Xenna's listing) -> the scheme xfd names the same store with."""
_KEY_PREFIXES = {"s3": ("aws_",), "gs": ("google_",), "az": ("azure_storage_", "azure_")}
"""object_store accepts every option name with these prefixes too (``aws_region``, ``AZURE_STORAGE_...``)."""
_KEY_ALIASES = {
    "s3": {"token": "session_token", "endpoint_url": "endpoint"},
    "gs": {"service_account_path": "service_account"},
    "az": {
        "access_key": "account_key",
        "master_key": "account_key",
        "authority_id": "tenant_id",
        "sas_token": "sas_key",
        "bearer_token": "token",
        "identity_endpoint": "msi_endpoint",
    },
}
"""object_store's other spellings of an option (``aws_token``, ``sas_token``, ...) -> xfd's name."""
_URL_KEYS = {"s3": ("bucket", "bucket_name"), "gs": ("bucket", "bucket_name"), "az": ("container_name",)}
"""Options that name the bucket (or container), which xfd takes from the URL."""


class XennaAdapterError(XfdError, ValueError):
    """A Xenna input xfd cannot carry out faithfully; the message says what and how to proceed."""


class XennaNotFoundError(PlanError, FileNotFoundError):
    """A requested object (or every object under a requested prefix) is not in its store: Xenna's
    ``FileNotFoundError``, from xfd's planning. The message names the request's key and store."""


class XennaPermissionError(PlanError, PermissionError):
    """The store refused access to a requested object or prefix: the ``PermissionError`` Xenna documents.
    The message names the request's key and store."""


class RayNotInitializedError(XfdError, RuntimeError):
    """``download_distributed`` needs a Ray session, as Xenna's does (the ``RuntimeError`` it documents)."""


@attrs.frozen
class XennaRequests:
    """What :func:`to_xenna` gives a Xenna pipeline: each stage's ``download_requests`` and the config."""

    download_requests: list[Any]
    config: Any
    """A ``cosmos_xenna.pipelines.v1.DistributedDownloadConfig``."""


# ---------------------------------------------------------------------------------------------------
# The switch: xfd in place of Xenna's download_distributed


@attrs.define(eq=False)
class XennaSwitch:
    """xfd standing in for ``cosmos_xenna.file_distribution.download_distributed`` while installed.

    ``reports`` collects the :class:`~xfd.report.Report` of every download run through it (a failed one
    too, before its ``DistributionError`` reaches Xenna), in order.
    """

    overwrite: bool = False
    progress: Any = "auto"
    reports: list[Report] = attrs.field(factory=list)
    replaced: Any = attrs.field(default=None, repr=False)
    """The function this switch replaced (Xenna's own, or an earlier switch's)."""

    def download_distributed(
        self,
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
    ) -> Report:
        """Xenna's signature, bound to this switch's ``overwrite`` and ``progress``: see the module's
        :func:`download_distributed`."""
        try:
            report = download_distributed(
                download_requests,
                object_store_config,
                chunk_size_bytes,
                node_parallelism,
                object_store_parallelism,
                p2p_retry_config,
                object_store_retry_config,
                verbose,
                testing_info,
                display_rate_s,
                overwrite=self.overwrite,
                progress=self.progress,
            )
        except DistributionError as error:
            self.reports.append(error.report)
            raise
        self.reports.append(report)
        return report


_SWITCHES: list[XennaSwitch] = []
_SWITCH_LOCK = threading.Lock()


def install(*, overwrite: bool = False, progress: Any = "auto") -> XennaSwitch:
    """Makes Xenna download with xfd until :func:`uninstall`: replaces
    ``cosmos_xenna.file_distribution.download_distributed``, which Xenna's ``run_pipeline``,
    ``download_artifacts`` and ``BackgroundArtifactDownloader`` all call (after collecting and deduping the
    stages' requests), with :meth:`XennaSwitch.download_distributed`. Code that imported the function by
    name before (``from cosmos_xenna.file_distribution import download_distributed``) keeps Xenna's.

    ``overwrite`` and ``progress`` are passed to every download (see :func:`download_distributed`).
    Installs nest: :func:`uninstall` restores what the latest install replaced.
    """
    from cosmos_xenna import file_distribution

    with _SWITCH_LOCK:
        switch = XennaSwitch(overwrite=overwrite, progress=progress, replaced=file_distribution.download_distributed)
        file_distribution.download_distributed = switch.download_distributed
        _SWITCHES.append(switch)
    return switch


def uninstall() -> None:
    """Undoes the latest :func:`install`: Xenna's ``download_distributed`` (or the one installed before)
    is back. Does nothing when xfd is not installed."""
    from cosmos_xenna import file_distribution

    with _SWITCH_LOCK:
        if _SWITCHES:
            file_distribution.download_distributed = _SWITCHES.pop().replaced


def is_installed() -> bool:
    """Whether Xenna downloads with xfd now (an :func:`install` not yet undone)."""
    return bool(_SWITCHES)


@contextlib.contextmanager
def use_xfd(*, overwrite: bool = False, progress: Any = "auto") -> Iterator[XennaSwitch]:
    """Within the ``with`` block, Xenna downloads with xfd (:func:`install`, then :func:`uninstall` on
    the way out, also after an error)::

        with xfd.xenna.use_xfd() as xfd_downloads:
            pipelines.run_pipeline(spec, config)     # the stages' download_requests, by xfd
        print(xfd_downloads.reports[-1].summary())
    """
    switch = install(overwrite=overwrite, progress=progress)
    try:
        yield switch
    finally:
        uninstall()


# ---------------------------------------------------------------------------------------------------
# Xenna's entry points, on xfd


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

    Same arguments, same meaning, same defaults (``None`` means what it means to Xenna): every request
    lands on every node of the running Ray cluster. As Xenna's, it needs Ray initialized
    (:class:`RayNotInitializedError`, a ``RuntimeError``, otherwise), and a missing object or a refused
    access raise ``FileNotFoundError`` / ``PermissionError`` (:class:`XennaNotFoundError`,
    :class:`XennaPermissionError`). Where it differs, on purpose (``docs/xenna.md``): it returns xfd's
    :class:`~xfd.report.Report`; a failed run raises :class:`~xfd.errors.DistributionError` (a
    ``RuntimeError``) carrying it; files at destinations that xfd did not write are kept and reported unless
    ``overwrite=True``; ``p2p_retry_config`` and ``display_rate_s`` are accepted, and xfd re-routes failed
    peer transfers and shows live progress (``progress`` as in :meth:`xfd.Manifest.distribute`);
    ``testing_info`` (fake nodes inside one Ray node) is refused: simulate nodes with
    :class:`xfd.runtime.LocalCluster`.
    """
    import ray

    del p2p_retry_config, display_rate_s  # accepted for drop-in compatibility; see the docstring
    if testing_info is not None:
        raise XennaAdapterError(
            "testing_info (fake nodes inside one Ray node) is not supported by xfd, which runs one agent, with "
            "one peer address and one node root, per Ray node: simulate nodes with xfd.runtime.LocalCluster "
            "(a raylet, an address and a root directory per node) and call this without testing_info"
        )
    if not ray.is_initialized():
        raise RayNotInitializedError(
            "Ray is not initialized: call ray.init() (or ray.init(address=...)) first, "
            "as for Xenna's download_distributed"
        )
    manifest = from_xenna(
        download_requests,
        object_store_config,
        chunk_size_bytes=chunk_size_bytes,
        node_parallelism=node_parallelism,
        object_store_parallelism=object_store_parallelism,
        object_store_retry_config=object_store_retry_config,
        overwrite=overwrite,
    )
    with _verbose(verbose):
        try:
            return manifest.distribute(progress=progress)  # a failed run raises DistributionError
        except PlanError as error:
            raise _as_xenna_error(error) from error


def download_for_stages(
    stages: Iterable[Any], config: Any, *, overwrite: bool = False, progress: Any = "auto"
) -> Report | None:
    """Xenna's ``download_artifacts(stages, config)`` with xfd as its downloader: Xenna collects the
    ``download_requests`` of every ``Stage`` / ``StageSpec``, dedupes them, connects to Ray as its pipelines
    do when Ray is not initialized, and xfd puts them on every node. Returns the report, or ``None`` when no
    stage asks for anything (Xenna then downloads nothing).
    """
    from cosmos_xenna.pipelines import v1 as pipelines

    with use_xfd(overwrite=overwrite, progress=progress) as switch:
        pipelines.download_artifacts(list(stages), config)
    return switch.reports[-1] if switch.reports else None


@contextlib.contextmanager
def _verbose(verbose: bool) -> Iterator[None]:
    """Xenna's ``verbose``: xfd's own debug logging, for this download only."""
    logger = logging.getLogger("xfd")
    level = logger.level
    if verbose:
        logger.setLevel(logging.DEBUG)
    try:
        yield
    finally:
        logger.setLevel(level)


def _as_xenna_error(error: PlanError) -> PlanError:
    """The planning error as the builtin type Xenna raises for it: its first problem decides, as Xenna
    stops at the first request that fails (messages from ``xfd.plan``'s store errors)."""
    first = str(error).split("\n")[1 if "\n" in str(error) else 0]
    if "does not exist" in first or ": no objects under " in first:
        return XennaNotFoundError(str(error))
    if "was denied" in first:
        return XennaPermissionError(str(error))
    return error


# ---------------------------------------------------------------------------------------------------
# Xenna -> xfd


def from_xenna(
    requests: Iterable[Any],
    object_store_config: Any,
    *,
    chunk_size_bytes: int | str | None = None,
    node_parallelism: int | None = None,
    object_store_parallelism: int | None = XENNA_OBJECT_STORE_PARALLELISM,
    object_store_retry_config: Any = None,
    overwrite: bool = False,
) -> Manifest:
    """The Manifest that does what ``download_distributed(requests, object_store_config, ...)`` asks.

    ``requests``: ``DownloadRequest`` values (or the bare ``ObjectDownloadRequest`` /
    ``PrefixDownloadRequest`` they wrap). ``object_store_config``: an ``ObjectStoreConfig`` (the default
    profile) or an ``ObjectStoreConfigByProfile``. Each profile becomes a store (the default profile is
    named ``default``), with its options under xfd's names (every spelling object_store accepts, such as
    ``aws_access_key_id`` or ``AWS_REGION``, is read). Requests repeated with the same key, destination and
    unpack destination become one artifact. ``None`` for a tuning value means Xenna's default (100 MiB
    chunks, 2 x this machine's CPUs per node, ``RetryConfig()``); ``chunk_size_bytes="auto"`` asks for
    xfd's own sizing. Every problem is raised at once as a :class:`~xfd.ManifestError` whose paths name
    the Xenna inputs.
    """
    profiles = _profiles(object_store_config)
    stores = {profile: _store_name(profile, profiles) for profile in profiles}
    unique = _deduplicated([_unwrap(r, i) for i, r in enumerate(requests)], profiles)
    problems = _unknown_profiles(unique, profiles)
    known = [(index, request) for index, request in unique if request.profile_name in profiles]
    builder = Manifest.builder()
    written: dict[str, dict[str, str]] = {}
    for profile, config in profiles.items():
        where = f"object_store_config.profiles[{profile!r}]"
        url, options, spelled, store_problems = _store(config, where)
        problems += store_problems
        written[stores[profile]] = spelled
        builder = builder.store(stores[profile], url, **options)
    for _, request in known:
        builder = _add_request(builder, request, stores)
    builder = builder.settings(
        **_settings(chunk_size_bytes, node_parallelism, object_store_parallelism, object_store_retry_config, overwrite)
    )
    try:
        manifest = builder.build()
    except ManifestError as error:
        problems = sorted(problems + _xenna_paths(error.problems, known, stores, written), key=_input_order)
        raise ManifestError(problems, SOURCE) from None
    if problems:
        raise ManifestError(sorted(problems, key=_input_order), SOURCE)
    return manifest


def _profiles(object_store_config: Any) -> dict[str | None, Any]:
    if hasattr(object_store_config, "profiles"):
        profiles = dict(object_store_config.profiles)
    elif hasattr(object_store_config, "uri") and hasattr(object_store_config, "config_args"):
        profiles = {None: object_store_config}
    else:
        raise XennaAdapterError(
            "object_store_config must be an ObjectStoreConfig or ObjectStoreConfigByProfile "
            f"(got {type(object_store_config).__name__})"
        )
    if not profiles:
        raise XennaAdapterError("object_store_config has no profiles: add at least one ObjectStoreConfig")
    return profiles


def _store_name(profile: str | None, profiles: Mapping[str | None, Any]) -> str:
    if profile is not None:
        return profile
    # The default profile is "default" unless a named profile already is; never two stores with one name.
    return DEFAULT_PROFILE_STORE if DEFAULT_PROFILE_STORE not in profiles else "xenna-default-profile"


def _store(config: Any, where: str) -> tuple[str, dict[str, Any], dict[str, str], list[tuple[str, str]]]:
    """A profile's ``(url, options, {xfd name: name as written}, problems)``: the URL in a scheme xfd
    names, options under xfd's names with their values taken literally (``$`` is not a template to
    Xenna), what the URL itself implies (an https S3 or Azure address), and the retry policy checked."""
    url, implied, problems = _store_url(str(config.uri), f"{where}.uri")
    scheme, bucket = urlsplit(url).scheme, urlsplit(url).netloc
    options: dict[str, Any] = {}
    spelled: dict[str, str] = {}
    for key, value in dict(config.config_args).items():
        name, at = _option_name(scheme, str(key)), f"{where}.config_args[{key!r}]"
        if name in _URL_KEYS.get(scheme, ()) or name in implied:
            if str(value).lower() != str(implied.get(name, bucket)).lower():
                problems.append(
                    (
                        at,
                        f"says {value!r} where the URI says {implied.get(name, bucket)!r}: Xenna would "
                        "list with one (obstore lets the option win) and download with the other "
                        "(object_store lets the URI win); make them agree or drop the option",
                    )
                )
            continue
        if name == "default_headers":
            problems.append(
                (
                    at,
                    "xfd sends no custom HTTP headers to a store; drop it (credentials go in their "
                    "own options, such as token or session_token)",
                )
            )
            continue
        literal = value.replace("$", "$$") if isinstance(value, str) else value
        if name in options and options[name] != literal:
            problems.append((at, f"sets {name!r} like config_args[{spelled[name]!r}], to another value; keep one"))
            continue
        options[name], spelled[name] = literal, str(key)
    problems += _retry_config_problems(getattr(config, "retry_config", None), f"{where}.retry_config")
    return url, options | implied, spelled, problems


def _option_name(scheme: str, key: str) -> str:
    """xfd's name for an option written as object_store accepts it: any case, with or without the
    scheme's prefix, or another spelling. A name no spelling matches is returned as written (lower-cased),
    for validation to refuse with a "did you mean"."""
    allowed = STORE_OPTIONS.get(scheme, frozenset()) | CLIENT_OPTIONS
    aliases = _KEY_ALIASES.get(scheme, {})
    name = key.lower()
    candidates = [name] + [name[len(p) :] for p in _KEY_PREFIXES.get(scheme, ()) if name.startswith(p)]
    for candidate in candidates:
        candidate = aliases.get(candidate, candidate)
        if candidate in allowed or candidate in _URL_KEYS.get(scheme, ()) or candidate == "default_headers":
            return candidate
    return name


def _store_url(uri: str, where: str) -> tuple[str, dict[str, Any], list[tuple[str, str]]]:
    """``(url, options the URL implies, problems)``: every URL form obstore's ``from_url`` reads, in the
    scheme xfd names that store with (``azure://c/`` is ``az://c/``, ``s3a://`` is ``s3://``, an https
    address of S3, R2 or Azure Blob is that store with its region, endpoint or account)."""
    try:
        parts = urlsplit(uri)
        host = parts.hostname or ""
    except ValueError as error:
        return uri, {}, [(where, f"not a URL: {error}")]
    scheme = parts.scheme.lower()
    if scheme not in _SCHEMES:
        return uri, {}, []  # validation names the schemes xfd reads
    if scheme in ("abfs", "abfss") and "@" in parts.netloc:
        container, _, address = parts.netloc.partition("@")
        account, _, domain = address.partition(".")
        if domain not in ("dfs.core.windows.net", "blob.core.windows.net"):
            return (
                uri,
                {},
                [
                    (
                        where,
                        f"{domain or address} is not an Azure Storage address xfd reads; write "
                        "az://CONTAINER/path with the account_name option",
                    )
                ],
            )
        return f"az://{container}{parts.path}", {"account_name": account}, []
    if scheme == "https":
        return _https_store(uri, parts.path, host, where)
    if scheme == _SCHEMES[scheme]:
        return uri, {}, []
    return f"{_SCHEMES[scheme]}://{parts.netloc}{parts.path}", {}, []


def _https_store(uri: str, path: str, host: str, where: str) -> tuple[str, dict[str, Any], list[tuple[str, str]]]:
    """An https address as object_store reads it (behind Xenna's obstore): S3 (path or virtual-hosted
    style, dual-stack), Cloudflare R2 or Azure Blob / Data Lake; any other host is a plain HTTP store."""
    first, _, rest = path.lstrip("/").partition("/")
    account, _, domain = host.partition(".")
    if domain in ("blob.core.windows.net", "dfs.core.windows.net"):
        if not first:
            return (
                uri,
                {},
                [(where, f"an Azure Storage address must name a container: https://ACCOUNT.{domain}/CONTAINER/...")],
            )
        return f"az://{first}/{rest}", {"account_name": account}, []
    store: tuple[str, dict[str, Any]]
    match host.split(".", 3):
        case ["s3", "dualstack", region, "amazonaws.com"]:
            store = (f"s3://{first}/{rest}", {"region": region, "endpoint": f"https://{host}"})
        case ["s3", region, "amazonaws", "com"]:
            store = (f"s3://{first}/{rest}", {"region": region})
        case [bucket, "s3", "amazonaws", "com"]:
            store = (f"s3://{bucket}{path}", {"virtual_hosted_style_request": True})
        case [bucket, "s3", "dualstack", tail] if tail.endswith(".amazonaws.com"):
            store = (
                f"s3://{bucket}{path}",
                {
                    "virtual_hosted_style_request": True,
                    "endpoint": f"https://{host}",
                    "region": tail.removesuffix(".amazonaws.com"),
                },
            )
        case [bucket, "s3", region, "amazonaws.com"]:
            store = (f"s3://{bucket}{path}", {"virtual_hosted_style_request": True, "region": region})
        case [_, "r2", "cloudflarestorage", "com"] | [_, _, "r2", "cloudflarestorage.com"]:
            store = (f"s3://{first}/{rest}", {"region": "auto", "endpoint": f"https://{host}"})
        case _:
            if host.endswith(("amazonaws.com", "fabric.microsoft.com")):
                return (
                    uri,
                    {},
                    [
                        (
                            where,
                            "not an S3 or Azure address object_store reads; write s3://BUCKET/... "
                            "(or az://CONTAINER/...) with the region, endpoint or account as options",
                        )
                    ],
                )
            return uri, {}, []
    if store[0].startswith("s3:///"):
        return (
            uri,
            {},
            [(where, f"this S3 address names no bucket: add it to the path, as in https://{host}/BUCKET/...")],
        )
    return store[0], store[1], []


_RETRY_FIELDS = {"max_retries": int, "retry_timeout": timedelta, "backoff": Mapping}
_BACKOFF_FIELDS = {"init_backoff": timedelta, "max_backoff": timedelta, "base": (int, float)}


def _retry_config_problems(retry: Any, where: str) -> list[tuple[str, str]]:
    """Xenna hands a profile's ``retry_config`` to obstore, which refuses a malformed one; xfd checks it the
    same way. It is not carried over: Xenna uses it only to list and HEAD, and xfd lists with obstore's
    standard retries (``docs/xenna.md``)."""
    if retry is None:
        return []
    if not isinstance(retry, Mapping):
        return [(where, f"must be an obstore RetryConfig dict (got {type(retry).__name__})")]
    problems = _typed_fields(retry, _RETRY_FIELDS, where)
    if isinstance(retry.get("backoff"), Mapping):
        problems += _typed_fields(retry["backoff"], _BACKOFF_FIELDS, f"{where}['backoff']")
    return problems


def _typed_fields(values: Mapping[str, Any], fields: Mapping[str, Any], where: str) -> list[tuple[str, str]]:
    problems = []
    for key, value in values.items():
        if key not in fields:
            problems.append((f"{where}[{key!r}]", f"unknown field; obstore's are {', '.join(fields)}"))
        elif isinstance(value, bool) or not isinstance(value, fields[key]):
            kind = fields[key]
            expected = "a number" if isinstance(kind, tuple) else getattr(kind, "__name__", str(kind))
            problems.append((f"{where}[{key!r}]", f"must be {expected} (got {value!r})"))
    return problems


def _unwrap(request: Any, index: int) -> Any:
    value = getattr(request, "value", request)
    if not (hasattr(value, "uri") and hasattr(value, "destination") and hasattr(value, "profile_name")):
        raise XennaAdapterError(
            f"download_requests[{index}]: not an ObjectDownloadRequest or PrefixDownloadRequest: {value!r:.80}"
        )
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

    Xenna's pipeline keeps the first of such requests whatever their profiles and unpack methods (so
    through the switch, after its dedupe, no conflict is left here); its ``download_distributed`` does not
    dedupe at all and downloads a repeat again, to the same path. xfd merges repeats that mean the same
    download and refuses the others, which would fetch from another bucket or unpack differently.
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
        if not request.cache:
            # Xenna never reads PrefixDownloadRequest.cache: every file it lists is cached and reused.
            log.info("PrefixDownloadRequest(uri=%r).cache=False has no effect, as in Xenna", request.uri)
        return builder.prefix(store, request.uri, to=to)
    builder = builder.object(store, request.uri, to=to)
    if request.unpack_options is None:
        return builder
    method = getattr(request.unpack_options.unpack_method, "value", request.unpack_options.unpack_method)
    return builder.unpack(_UNPACK_FORMATS.get(method, method), to=str(request.unpack_options.unpack_destination))


def _settings(
    chunk_size_bytes: int | str | None,
    node_parallelism: int | None,
    object_store_parallelism: int | None,
    retry: Any,
    overwrite: bool,
) -> dict[str, Any]:
    """Xenna's tuning as xfd settings, ``None`` meaning what Xenna makes of it."""
    if node_parallelism is None:
        node_parallelism = 2 * (os.cpu_count() or 1)  # Xenna: twice the CPUs of the machine that calls it
    if object_store_parallelism is None:
        object_store_parallelism = XENNA_OBJECT_STORE_PARALLELISM
    if isinstance(node_parallelism, int) and node_parallelism > NODE_PARALLELISM_MAX:
        log.info("node_parallelism=%d: xfd runs at most %d transfers per node", node_parallelism, NODE_PARALLELISM_MAX)
        node_parallelism = NODE_PARALLELISM_MAX
    retries, delay_ms = (
        (XENNA_RETRIES, XENNA_BASE_DELAY_MS) if retry is None else (retry.num_retries, retry.base_delay_millis)
    )
    # Xenna's num_retries counts retries after the first try; its first wait is base_delay_millis.
    backoff = max(delay_ms, 1) / 1000
    settings: dict[str, Any] = {
        "chunk_size": _chunk_size(chunk_size_bytes),
        "node_parallelism": node_parallelism,
        "origin_parallelism": object_store_parallelism,
        "origin_attempts": retries + 1,
        "origin_backoff": backoff,
        "overwrite": overwrite or None,
    }
    if isinstance(node_parallelism, int) and node_parallelism >= 1:
        settings["upload_slots"] = node_parallelism  # Xenna's limit on a node's uploads is node_parallelism too
    if backoff > Settings().origin_max_backoff:
        settings["origin_max_backoff"] = backoff
    if object_store_parallelism is not None and object_store_parallelism < Settings().origin_chunk_streams:
        settings["origin_chunk_streams"] = max(1, object_store_parallelism)  # never more GETs than allowed
    return {k: v for k, v in settings.items() if v is not None}


def _chunk_size(chunk_size_bytes: int | str | None) -> int | str:
    """Xenna's chunk size as xfd's: ``None`` is Xenna's 100 MiB; a size xfd does not cut (under 1 MiB, over
    4 GiB) becomes the nearest one it does, which moves the same bytes to the same files in other units.
    Not a positive size: left for validation to refuse, as Xenna refuses it (a ``ValueError``)."""
    if chunk_size_bytes is None:
        return XENNA_CHUNK_SIZE
    if isinstance(chunk_size_bytes, bool) or not isinstance(chunk_size_bytes, int) or chunk_size_bytes <= 0:
        return chunk_size_bytes  # type: ignore[return-value]
    bounded = min(max(chunk_size_bytes, CHUNK_MIN), CHUNK_MAX)
    if bounded != chunk_size_bytes:
        log.info(
            "chunk_size_bytes=%d: xfd cuts files into chunks of 1 MiB to 4 GiB; using %d", chunk_size_bytes, bounded
        )
    return bounded


def _unknown_profiles(requests: list[tuple[int, Any]], profiles: Mapping[str | None, Any]) -> list[tuple[str, str]]:
    known = ", ".join(repr(p) for p in profiles)
    return [
        (
            f"download_requests[{index}].value.profile_name",
            f"no profile {request.profile_name!r} in object_store_config (profiles: {known})",
        )
        for index, request in requests
        if request.profile_name not in profiles
    ]


_ARTIFACT_FIELDS = {
    "to": "destination",
    "key": "uri",
    "prefix": "uri",
    "store": "profile_name",
    "unpack.to": "unpack_options.unpack_destination",
    "unpack.format": "unpack_options.unpack_method",
    "unpack": "unpack_options",
}
_SETTINGS_FIELDS = {
    "chunk_size": "chunk_size_bytes",
    "node_parallelism": "node_parallelism",
    "origin_parallelism": "object_store_parallelism",
    "origin_attempts": "object_store_retry_config.num_retries",
    "origin_backoff": "object_store_retry_config.base_delay_millis",
}


def _input_order(problem: tuple[str, str]) -> tuple[int, int]:
    """Store configs first, then requests by index, then tuning values: the order of the inputs."""
    path = problem[0]
    if path.startswith("download_requests["):
        return 1, int(path[len("download_requests[") : path.index("]")])
    return (0, 0) if path.startswith("object_store_config") else (2, 0)


def _xenna_paths(
    problems: list[tuple[str, str]],
    requests: list[tuple[int, Any]],
    stores: Mapping[str | None, str],
    written: Mapping[str, Mapping[str, str]],
) -> list[tuple[str, str]]:
    """Rewrites manifest paths (``artifacts[3].to``) as the Xenna inputs they came from."""
    profile_of = {name: profile for profile, name in stores.items()}
    return [(_xenna_path(path, requests, profile_of, written), message) for path, message in problems]


def _xenna_path(
    path: str,
    requests: list[tuple[int, Any]],
    profile_of: Mapping[str, str | None],
    written: Mapping[str, Mapping[str, str]],
) -> str:
    head, _, rest = path.partition(".")
    if head.startswith("artifacts["):
        index = requests[int(head[len("artifacts[") : -1])][0]
        return f"download_requests[{index}].value" + (f".{_ARTIFACT_FIELDS.get(rest, rest)}" if rest else "")
    if head == "stores":
        name, _, option = rest.partition(".")
        where = f"object_store_config.profiles[{profile_of.get(name, name)!r}]"
        option = written.get(name, {}).get(option, option)
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
    sha256 checks, node selectors, uncached files, unpack limits, settings Xenna has no knob for) rather
    than hand Xenna a weaker download.
    """
    from cosmos_xenna import file_distribution as fd
    from cosmos_xenna.pipelines import v1 as pipelines

    _refuse_unmappable(manifest)
    profile_of = {name: (None if name == DEFAULT_PROFILE_STORE else name) for name in manifest.stores}
    profiles = {
        profile_of[name]: fd.ObjectStoreConfig(uri=store.url, config_args=resolved_options(name, store, environ))
        for name, store in manifest.stores.items()
    }
    requests = [
        fd.DownloadRequest(value=_request(fd, artifact, profile_of[artifact.store])) for artifact in manifest.artifacts
    ]
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
        return fd.PrefixDownloadRequest(uri=artifact.prefix, destination=Path(artifact.to), profile_name=profile)
    unpack = None
    if artifact.unpack is not None:
        method = fd.UnpackMethod("tar.gz" if artifact.unpack.format == "tgz" else artifact.unpack.format)
        unpack = fd.UnpackOptions(unpack_destination=Path(artifact.unpack_destination or ""), unpack_method=method)
    return fd.ObjectDownloadRequest(
        uri=artifact.key, destination=Path(artifact.destination), unpack_options=unpack, profile_name=profile
    )


def _refuse_unmappable(manifest: Manifest) -> None:
    problems = [
        problem
        for index, artifact in enumerate(manifest.artifacts)
        for problem in _artifact_unmappable(f"artifacts[{index}]", artifact)
    ]
    problems += _settings_unmappable(manifest.settings)
    if problems:
        raise XennaAdapterError(ManifestError(problems, manifest.source or "manifest").args[0])


def _artifact_unmappable(path: str, artifact: ObjectArtifact | PrefixArtifact) -> list[tuple[str, str]]:
    problems: list[tuple[str, str]] = []
    if isinstance(artifact, PrefixArtifact) and (artifact.include or artifact.exclude):
        problems.append((path, "include/exclude globs have no Xenna equivalent (Xenna takes a whole prefix)"))
    if isinstance(artifact, ObjectArtifact) and artifact.sha256:
        problems.append((f"{path}.sha256", "Xenna cannot verify a sha256; drop it to hand this to Xenna"))
    if not artifact.cache:
        problems.append(
            (
                f"{path}.cache",
                "Xenna caches every file (it never reads PrefixDownloadRequest.cache); cache = false has no equivalent",
            )
        )
    if artifact.nodes:
        problems.append((f"{path}.nodes", "Xenna puts every request on every node; node selectors have no equivalent"))
    for limit in ("max_size", "max_ratio"):
        if isinstance(artifact, ObjectArtifact) and artifact.unpack and getattr(artifact.unpack, limit) is not None:
            problems.append(
                (
                    f"{path}.unpack.{limit}",
                    "Xenna sets no limits on unpacking; leave it at its default to hand this manifest to Xenna",
                )
            )
    return problems


def _settings_unmappable(settings: Settings) -> list[tuple[str, str]]:
    """Settings Xenna has no knob for, unless at xfd's default or at what Xenna does anyway: a node's
    uploads are limited by node_parallelism, a pipeline retries the origin per ``RetryConfig()``."""
    defaults = Settings()
    xenna_does = {
        "upload_slots": settings.node_parallelism,
        "origin_chunk_streams": min(defaults.origin_chunk_streams, settings.origin_parallelism),
        "origin_attempts": XENNA_RETRIES + 1,
        "origin_backoff": XENNA_BASE_DELAY_MS / 1000,
    }
    return [
        (
            f"settings.{field}",
            "has no Xenna DistributedDownloadConfig equivalent; leave it at its default to hand this manifest to Xenna",
        )
        for field in (
            "upload_slots",
            "overwrite",
            "origin_chunk_streams",
            "origin_attempts",
            "origin_backoff",
            "origin_max_backoff",
            "origin_timeout",
            "disk_reserve",
            "origin_rate",
            "origin_request_rate",
            "upload_rate",
        )
        if getattr(settings, field) not in (getattr(defaults, field), xenna_does.get(field, getattr(defaults, field)))
    ]


__all__ = [
    "RayNotInitializedError",
    "XennaAdapterError",
    "XennaNotFoundError",
    "XennaPermissionError",
    "XennaRequests",
    "XennaSwitch",
    "download_distributed",
    "download_for_stages",
    "from_xenna",
    "install",
    "is_installed",
    "to_xenna",
    "uninstall",
    "use_xfd",
]
