"""The TOML file format: one cattrs converter, strict about unknown keys and about types.

Each section (``settings``, each store, each artifact) is structured on its own so that every problem in
the file is found in one pass; then :func:`xfd.manifest.validate.validate` checks meaning. Problems come
back as one :class:`~xfd.errors.ManifestError` whose lines read ``path: what is wrong``.
"""

from __future__ import annotations

import math
import os
import tomllib
from collections.abc import Iterator, Mapping
from typing import Any, TypeVar

import attrs
import cattrs
import tomli_w
from cattrs.errors import ClassValidationError, ForbiddenExtraKeysError, IterableValidationError
from cattrs.gen import make_dict_structure_fn, make_dict_unstructure_fn, override

from xfd.errors import ManifestError
from xfd.formatting import shown
from xfd.manifest.model import (
    UNPACK_FORMATS,
    Artifact,
    Manifest,
    ObjectArtifact,
    PrefixArtifact,
    Settings,
    Store,
    Unpack,
    UnpackFormat,
)
from xfd.manifest.units import format_rate, format_size, parse_rate, parse_size
from xfd.manifest.validate import Problem, did_you_mean, in_document_order, validate_parts

M = TypeVar("M", bound=Manifest)

TOP_LEVEL_KEYS = ("settings", "stores", "artifacts")
_TYPE_NAMES = {str: "a string", bool: "true or false", int: "an integer", float: "a number"}


INT64 = range(-(2**63), 2**63)
"""TOML's integers: anything wider cannot be written to a file that every TOML reader loads losslessly."""


def _strict(kind: type) -> Any:
    def structure(value: Any, _: type) -> Any:
        is_int = isinstance(value, int) and not isinstance(value, bool)
        if is_int and kind in (int, float) and value not in INT64:
            raise ValueError(
                f"must be {_TYPE_NAMES[kind]} (got an integer of {value.bit_length()} bits; TOML's have 64)"
            )
        ok = isinstance(value, kind) and not (kind in (int, float) and isinstance(value, bool))
        if kind is float and is_int:
            return float(value)
        if not ok:
            raise ValueError(f"must be {_TYPE_NAMES[kind]} (got {shown(value)})")
        return value

    return structure


def _make_converter() -> cattrs.Converter:
    converter = cattrs.Converter(forbid_extra_keys=True, detailed_validation=True)
    for kind in (str, bool, int, float):
        converter.register_structure_hook(kind, _strict(kind))
    converter.register_structure_hook_func(lambda t: t == UnpackFormat, _unpack_format)
    converter.register_structure_hook_func(lambda t: t == tuple[str, ...], _string_list)
    converter.register_structure_hook_func(lambda t: t == Mapping[str, str], _label_table)
    chunk_hook = override(struct_hook=lambda v, _: _chunk_size(v))
    size_hook = override(struct_hook=lambda v, _: parse_size(v))
    ratio_hook = override(struct_hook=_strict(float))
    rate_hook = override(struct_hook=lambda v, _: parse_rate(v))
    rates = {"origin_rate": rate_hook, "upload_rate": rate_hook}
    for cls, overrides in (
        (Settings, {"chunk_size": chunk_hook, "disk_reserve": size_hook, **rates}),
        (Unpack, {"max_size": size_hook, "max_ratio": ratio_hook}),
        (ObjectArtifact, {}),
        (PrefixArtifact, {}),
    ):
        converter.register_structure_hook(cls, _tables_only(make_dict_structure_fn(cls, converter, **overrides)))
    converter.register_structure_hook(Store, _structure_store)
    converter.register_structure_hook(Artifact, _structure_artifact)
    converter.register_unstructure_hook(Store, lambda s: {"url": s.url, **s.options})
    for cls in (Settings, Unpack, ObjectArtifact, PrefixArtifact):
        converter.register_unstructure_hook(cls, make_dict_unstructure_fn(cls, converter, _cattrs_omit_if_default=True))
    return converter


def _chunk_size(value: Any) -> int | str:
    if value == "auto":
        return "auto"
    try:
        return parse_size(value)
    except ValueError as error:
        raise ValueError(f'must be "auto" or {str(error).removeprefix("must be ")}') from None


def _tables_only(structure: Any) -> Any:
    """cattrs assumes a mapping; a list or a string where a table belongs gets a message instead."""

    def checked(value: Any, cls: type) -> Any:
        if not isinstance(value, dict):
            raise ValueError(f"must be a table (got {type(value).__name__} {shown(value):.40})")
        return structure(value, cls)

    return checked


def _label_table(value: Any, _: type) -> dict[str, str]:
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) and k and v for k, v in value.items()
    ):
        raise ValueError(f'must be a table of Ray labels, as in {{ gpu = "a100" }} (got {shown(value)})')
    return dict(value)


def _string_list(value: Any, _: type) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"must be a list of strings (got {shown(value)})")
    return tuple(value)


def _unpack_format(value: Any, _: type) -> str:
    if value not in UNPACK_FORMATS:
        raise ValueError(f"must be one of {', '.join(UNPACK_FORMATS)} (got {shown(value)})")
    return value


def _structure_store(value: Any, _: type) -> Store:
    if not isinstance(value, dict):
        raise ValueError("must be a table with url = ... and options")
    options = dict(value)
    url = options.pop("url", None)
    if not isinstance(url, str):
        raise ValueError('needs url = "s3://bucket/prefix" (or gs://, az://, https://, file://, memory://)')
    for key, option in options.items():
        if not isinstance(option, (str, bool, int, float)):
            raise ValueError(f"option {key!r} must be a string, boolean or number")
        if isinstance(option, int) and not isinstance(option, bool) and option not in INT64:
            raise ValueError(f"option {key!r} must be an integer of at most 64 bits")
        if isinstance(option, float) and math.isnan(option):
            raise ValueError(f"option {key!r} must be a number, not nan")
    return Store(url=url, options=options)


def _structure_artifact(value: Any, _: type) -> Artifact:
    if not isinstance(value, dict):
        raise ValueError("must be a table")
    has_key, has_prefix = "key" in value, "prefix" in value
    if has_key == has_prefix:
        raise ValueError(
            'needs exactly one of key = "dir/file" (one object) or prefix = "dir/" (every object under it)'
        )
    return CONVERTER.structure(value, ObjectArtifact if has_key else PrefixArtifact)


CONVERTER = _make_converter()


def loads(text: str, source: str | None = None, manifest_class: type[M] = Manifest) -> M:  # type: ignore[assignment]
    try:
        document = tomllib.loads(text)
    except (ValueError, RecursionError) as error:  # TOMLDecodeError; also an integer of over 4300 digits, deep nesting
        why = "nested too deeply" if isinstance(error, RecursionError) else error
        raise ManifestError([("", f"not valid TOML: {why}")], source) from None
    return from_document(document, source, manifest_class)


def load(path: str | os.PathLike[str], manifest_class: type[M] = Manifest) -> M:  # type: ignore[assignment]
    path = os.fspath(path)
    try:
        with open(path, "rb") as file:
            data = file.read()
    except OSError as error:
        raise ManifestError([("", f"cannot read the manifest: {error.strerror}")], path) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:  # a binary file, or text in another encoding
        why = (
            f"not UTF-8 TOML text (byte 0x{data[error.start]:02x} at offset {error.start} is not UTF-8); "
            "a manifest is a TOML text file, saved as UTF-8"
        )
        raise ManifestError([("", why)], path) from None
    return loads(text, path, manifest_class)


def from_document(document: Mapping[str, Any], source: str | None = None, manifest_class: type[M] = Manifest) -> M:  # type: ignore[assignment]
    """A validated manifest of ``manifest_class`` from parsed TOML (or any dict of the same shape)."""
    problems: list[Problem] = []
    for key in document:
        if key not in TOP_LEVEL_KEYS:
            problems.append(
                (key, f"unknown key{did_you_mean(key, TOP_LEVEL_KEYS)} (top-level keys: {', '.join(TOP_LEVEL_KEYS)})")
            )
    settings, unread = _settings(document.get("settings", {}), problems)
    stores_raw = document.get("stores", {})
    stores: dict[str, Store] = {}
    if not isinstance(stores_raw, dict):
        problems.append(("stores", "must be a table of stores, as in [stores.models]"))
    else:
        for name, raw in stores_raw.items():
            if (store := _section(raw, Store, f"stores.{name}", problems)) is not None:
                stores[name] = store
    artifacts_raw = document.get("artifacts", [])
    artifacts: list[tuple[int, Artifact]] = []
    if not isinstance(artifacts_raw, list):
        problems.append(("artifacts", "must be an array of tables, as in [[artifacts]]"))
    else:
        for index, raw in enumerate(artifacts_raw):
            if (artifact := _section(raw, Artifact, f"artifacts[{index}]", problems)) is not None:
                artifacts.append((index, artifact))
    settings_keys = list(document.get("settings", {})) if isinstance(document.get("settings"), dict) else []
    if problems:
        # Meaning is checked on every part that could be structured, so one pass reports everything.
        problems += validate_parts(settings, stores, artifacts, unread_settings=unread)
        raise ManifestError(in_document_order(problems, settings_keys), source)
    try:  # the manifest validates itself (the same checks), so there is one place that decides
        return manifest_class(stores=stores, artifacts=tuple(a for _, a in artifacts), settings=settings, source=source)
    except ManifestError as error:  # in the order of this document's settings keys
        raise ManifestError(in_document_order(error.problems, settings_keys), source) from None


def _settings(raw: Any, problems: list[Problem]) -> tuple[Settings, frozenset[str]]:
    """The settings, each key structured on its own so that one value of the wrong type hides no other
    problem; keys that could not be read are left at their defaults and returned, for validation to skip."""
    if not isinstance(raw, dict):
        problems.append(("settings", f"must be a table (got {type(raw).__name__} {raw!r:.40})"))
        return Settings(), frozenset()
    values: dict[str, Any] = {}
    unread: set[str] = set()
    for key, value in raw.items():
        one = _section({key: value}, Settings, "settings", problems)
        if one is None:
            unread.add(key)
        else:
            values[key] = getattr(one, key)
    return Settings(**values), frozenset(unread)


def _section(raw: Any, kind: Any, path: str, problems: list[Problem]) -> Any:
    if not isinstance(raw, dict):
        problems.append((path, f"must be a table (got {type(raw).__name__} {raw!r:.40})"))
        return None
    try:
        return CONVERTER.structure(raw, kind)
    except Exception as error:  # noqa: BLE001 - every structuring failure becomes a problem line
        problems.extend(_flatten(error, path))
        return None


def _flatten(error: BaseException, path: str) -> Iterator[Problem]:
    if isinstance(error, (ClassValidationError, IterableValidationError)):
        with_notes, without = error.group_exceptions()
        for inner, note in with_notes:
            step = f"[{note.index!r}]" if isinstance(error, IterableValidationError) else f".{note.name}"
            yield from _flatten(inner, path + step)
        for inner in without:
            yield from _flatten(inner, path)
    elif isinstance(error, ForbiddenExtraKeysError):
        fields = [a.name for a in attrs.fields(error.cl)] if attrs.has(error.cl) else []
        for key in sorted(error.extra_fields):
            hint = did_you_mean(key, fields) or f" (allowed: {', '.join(fields)})"
            yield f"{path}.{key}", f"unknown key{hint}"
    elif isinstance(error, KeyError):
        yield path, "required key missing"
    elif isinstance(error, (ValueError, TypeError)):
        yield path, str(error)
    else:
        raise error


def to_document(manifest: Manifest) -> dict[str, Any]:
    document: dict[str, Any] = {}
    settings = CONVERTER.unstructure(manifest.settings)
    _sizes_as_text(settings, "chunk_size", "disk_reserve")
    for key in ("origin_rate", "upload_rate"):
        if key in settings:
            settings[key] = format_rate(settings[key])
    if settings:
        document["settings"] = settings
    if manifest.stores:
        document["stores"] = {name: CONVERTER.unstructure(s, Store) for name, s in manifest.stores.items()}
    if manifest.artifacts:
        document["artifacts"] = [_unstructure_artifact(a) for a in manifest.artifacts]
    return document


def _unstructure_artifact(artifact: Artifact) -> dict[str, Any]:
    raw = CONVERTER.unstructure(artifact, type(artifact))
    for key in ("include", "exclude"):
        if key in raw:
            raw[key] = list(raw[key])
    if "nodes" in raw:
        raw["nodes"] = dict(raw["nodes"])
    if not raw.get("nodes", True):
        del raw["nodes"]
    if "unpack" in raw:
        _sizes_as_text(raw["unpack"], "max_size")
    return raw


def _sizes_as_text(table: dict[str, Any], *keys: str) -> None:
    """Sizes written the way people read them (``64GiB``), where they are exact."""
    for key in keys:
        if isinstance(table.get(key), int) and not isinstance(table[key], bool):
            table[key] = format_size(table[key])


def dumps(manifest: Manifest) -> str:
    return tomli_w.dumps(to_document(manifest))
