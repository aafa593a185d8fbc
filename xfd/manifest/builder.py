"""A fluent builder for manifests, for notebooks and code.

Each call returns a new builder (re-running a notebook cell never adds an artifact twice), and
:meth:`ManifestBuilder.build` validates exactly like a TOML file does, with the same messages::

    manifest = (
        xfd.Manifest.builder()
        .store("models", "s3://my-bucket/llama", region="us-west-2")
        .object("models", "7b/model.safetensors", to="/models/llama/model.safetensors")
        .object("models", "7b/tokenizer.tar.gz", to="/models/llama/tokenizer.tar.gz")
        .unpack()                                    # into /models/llama/tokenizer
        .prefix("models", "7b/config/", to="/models/llama/config/", include=["*.json"])
        .settings(chunk_size="32MiB")
        .build()
    )

Values of the wrong kind (a number for a key, a string for ``include``, a list for ``nodes``) are reported
by :meth:`ManifestBuilder.build` as a :class:`~xfd.errors.ManifestError`, like in a TOML file. A call that
does not fit a method's signature (an unknown keyword such as ``settings(chunk_sise=...)``, a missing
``to=``) raises ``TypeError``, as any Python call does.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Generic, TypeVar

import attrs

from xfd.errors import ManifestError
from xfd.manifest.model import Manifest, UnpackFormat
from xfd.manifest.stores import OptionValue

M = TypeVar("M", bound=Manifest)


@attrs.frozen
class ManifestBuilder(Generic[M]):
    """Collects stores, artifacts and settings; :meth:`build` turns them into a validated Manifest of the
    class whose ``builder()`` made it (``xfd.Manifest.builder()`` builds an :class:`xfd.Manifest`)."""

    _manifest_class: type[M] = attrs.field(default=Manifest, alias="manifest_class", repr=False)  # type: ignore[assignment]
    _settings: dict[str, Any] = attrs.field(factory=dict, alias="settings")
    _stores: dict[str, dict[str, Any]] = attrs.field(factory=dict, alias="stores")
    _artifacts: tuple[dict[str, Any], ...] = attrs.field(default=(), alias="artifacts")

    def settings(
        self,
        *,
        chunk_size: int | str | None = None,  # a size, or "auto"
        node_parallelism: int | None = None,
        upload_slots: int | None = None,
        origin_parallelism: int | None = None,
        origin_chunk_streams: int | None = None,
        overwrite: bool | None = None,
        origin_attempts: int | None = None,
        origin_backoff: float | None = None,
        origin_max_backoff: float | None = None,
        origin_timeout: float | None = None,
        disk_reserve: int | str | None = None,  # a size
        origin_rate: int | str | None = None,  # a rate: "200MB/s"
        origin_request_rate: int | None = None,
        upload_rate: int | str | None = None,  # a rate
    ) -> ManifestBuilder[M]:
        """Overrides settings (see :class:`xfd.manifest.model.Settings` for each one's meaning and default)."""
        given = {k: v for k, v in locals().items() if k != "self" and v is not None}
        return attrs.evolve(self, settings={**self._settings, **given})

    def store(self, name: str, url: str, **options: OptionValue) -> ManifestBuilder[M]:
        """Declares the store ``name`` at ``url`` (s3://, gs://, az://, https://, file://, memory://).

        ``options`` use obstore's names (``region``, ``endpoint``, ``allow_http``, ...); string values
        may reference the environment as ``"${VAR}"``.
        """
        if not isinstance(name, str):  # it keys a table: anything else could not even be stored
            why = f"a store name must be a string such as 'models' (got {type(name).__name__})"
            raise ManifestError([("stores", why)], "builder")
        return attrs.evolve(self, stores={**self._stores, name: {"url": url, **options}})

    def object(
        self,
        store: str,
        key: str,
        *,
        to: str,
        name: str | None = None,
        sha256: str | None = None,
        cache: bool = True,
        nodes: Mapping[str, str] | None = None,
    ) -> ManifestBuilder[M]:
        """Adds one object of ``store``, put at ``to`` on every node (``to`` ending in ``/``: inside it).

        ``nodes``: only nodes whose Ray labels include all these pairs get it (default: every node).
        """
        artifact = {
            "store": store,
            "key": key,
            "to": to,
            "name": name,
            "sha256": sha256,
            "cache": cache,
            "nodes": _table(nodes),
        }
        return self._add(artifact)

    def prefix(
        self,
        store: str,
        prefix: str,
        *,
        to: str,
        include: Sequence[str] = (),
        exclude: Sequence[str] = (),
        name: str | None = None,
        cache: bool = True,
        nodes: Mapping[str, str] | None = None,
    ) -> ManifestBuilder[M]:
        """Adds every object under ``prefix`` of ``store``, mirrored below the directory ``to``.

        ``nodes``: only nodes whose Ray labels include all these pairs get it (default: every node).
        """
        artifact = {
            "store": store,
            "prefix": prefix,
            "to": to,
            "name": name,
            "cache": cache,
            "include": _list(include),
            "exclude": _list(exclude),
            "nodes": _table(nodes),
        }
        return self._add(artifact)

    def unpack(
        self,
        format: UnpackFormat = "auto",
        *,
        to: str | None = None,
        max_size: int | str | None = None,
        max_ratio: float | None = None,
    ) -> ManifestBuilder[M]:
        """Extracts the archive added by the previous :meth:`object` call after it arrives.

        ``to`` defaults to the archive's destination without its suffix (``x.tar.gz`` -> ``x``).
        ``max_size`` (a size, default 64 GiB) and ``max_ratio`` (unpacked bytes per archive byte, default
        200) bound what it may unpack to (see :class:`xfd.manifest.model.Unpack`).
        """
        if not self._artifacts or "key" not in self._artifacts[-1]:
            raise ManifestError(
                [("", "unpack() applies to the artifact added just before it: call object() first")], "builder"
            )
        unpack = {"format": format, "to": to, "max_size": max_size, "max_ratio": max_ratio}
        last = {**self._artifacts[-1], "unpack": _without_none(unpack)}
        return attrs.evolve(self, artifacts=(*self._artifacts[:-1], last))

    def build(self) -> M:
        """Validates everything and returns the Manifest; raises ManifestError listing every problem."""
        from xfd.manifest.toml_format import from_document

        return from_document(self.to_document(), "builder", self._manifest_class)

    def to_document(self) -> dict[str, Any]:
        """The manifest in its TOML shape (``None`` values dropped), before validation."""
        document: dict[str, Any] = {}
        if self._settings:
            document["settings"] = dict(self._settings)
        if self._stores:
            document["stores"] = {name: dict(raw) for name, raw in self._stores.items()}
        if self._artifacts:
            document["artifacts"] = [_without_none(a) for a in self._artifacts]
        return document

    def _add(self, artifact: dict[str, Any]) -> ManifestBuilder[M]:
        return attrs.evolve(self, artifacts=(*self._artifacts, artifact))


def _without_none(raw: dict[str, Any]) -> dict[str, Any]:
    """``raw`` without the arguments left at ``None`` (their defaults); values given are never looked into."""
    return {k: v for k, v in raw.items() if v is not None}


def _list(value: Any) -> Any:
    """A list for a list or tuple; anything else as given, for validation to name (a string is not a list of
    globs: ``include="*.json"`` must not become ``["*", ".", "j", ...]``)."""
    return list(value) if isinstance(value, (list, tuple)) else value


def _table(value: Any) -> Any:
    """A dict for a mapping; anything else (a list, a string) as given, for validation to name."""
    return dict(value) if isinstance(value, Mapping) else value
