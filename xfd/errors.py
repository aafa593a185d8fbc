"""The one exception hierarchy of xfd.

Every error xfd raises on purpose is an :class:`XfdError`. Where a builtin exception already carries the
meaning (a missing file, a denied permission, a bad value) xfd raises the builtin subclass too, so
``except FileNotFoundError`` keeps working around xfd calls.
"""

from __future__ import annotations


class XfdError(Exception):
    """Base class of every error xfd raises on purpose."""


class ConfigError(XfdError, ValueError):
    """An option or environment setting has a value xfd cannot use; the message names it and the fix."""


class EngineError(XfdError):
    """The node engine (the Rust core) failed; the message names the file or chunk concerned."""


class RangeError(EngineError, ValueError):
    """A byte range does not lie inside the file it addresses."""


__all__ = ["ConfigError", "EngineError", "RangeError", "XfdError"]
