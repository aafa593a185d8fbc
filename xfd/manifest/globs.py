"""Glob patterns for prefix artifacts' ``include`` / ``exclude``.

``*`` and ``?`` stay within one path segment, ``**`` spans any number of segments (``a/**/b`` matches
``a/b``), ``[...]`` is a character class. A pattern without ``/`` is matched against the file name, so
``*.json`` takes JSON files at any depth.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence


@functools.cache
def _compile(pattern: str) -> re.Pattern[str]:
    out, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        elif pattern[i] == "[" and (end := pattern.find("]", i + 2)) != -1:
            body = pattern[i + 1 : end]
            out.append("[" + ("^" + re.escape(body[1:]) if body[0] == "!" else re.escape(body)) + "]")
            i = end + 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out) + r"\Z", re.DOTALL)


def matches(pattern: str, relative_path: str) -> bool:
    """Whether ``relative_path`` (below the prefix, ``/``-separated) matches ``pattern``."""
    target = relative_path if "/" in pattern else relative_path.rsplit("/", 1)[-1]
    return _compile(pattern).match(target) is not None


def selected(relative_path: str, include: Sequence[str], exclude: Sequence[str]) -> bool:
    """Taken when it matches some include pattern (or there are none) and no exclude pattern."""
    if include and not any(matches(p, relative_path) for p in include):
        return False
    return not any(matches(p, relative_path) for p in exclude)
