"""Lock files: the identities a plan resolved, so a later run can insist the stores have not changed.

``artifacts.toml`` locks into ``artifacts.lock.json`` beside it. The lock lists, per store URL and key,
the size, ETag and version seen. ``Manifest.plan(locked=True)`` fails when an object changed, appeared
under a locked prefix, or disappeared.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from xfd.errors import ConfigError, PlanError
from xfd.manifest.model import Manifest

if TYPE_CHECKING:
    from xfd.plan import Plan  # the plan layer is this module's own: plan.py imports it

LOCK_FORMAT = "xfd.lock/1"


def default_lock_path(manifest: Manifest) -> str:
    if manifest.source is None or manifest.source == "builder":
        raise ConfigError("this manifest was not loaded from a file: pass lock_path=... to name the lock file")
    source = Path(manifest.source)
    return str(source.with_name(source.stem + ".lock.json"))


def _identities(plan: Plan) -> dict[str, dict[str, object]]:
    return {
        f"{plan.stores[o.store].url.rstrip('/')}/{o.key}": {"size": o.size, "etag": o.etag, "version": o.version}
        for o in plan.objects
    }


def write_lock(plan: Plan, path: str) -> None:
    document = {"format": LOCK_FORMAT, "objects": dict(sorted(_identities(plan).items()))}
    target = Path(path)
    fd, temp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent or ".")
    try:
        with os.fdopen(fd, "w") as out:
            json.dump(document, out, indent=2)
            out.write("\n")
        os.replace(temp, target)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def check_lock(plan: Plan, path: str) -> None:
    try:
        document = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise PlanError(f"locked run, but there is no lock file at {path}; create it with `xfd lock`") from None
    except (OSError, ValueError) as error:
        raise PlanError(f"cannot read the lock file {path}: {error}") from None
    if document.get("format") != LOCK_FORMAT:
        raise PlanError(f"{path} is not an xfd lock file of format {LOCK_FORMAT}")
    locked, now = document["objects"], _identities(plan)
    changes = [
        f"changed: {k} (was {locked[k]}, now {now[k]})" for k in sorted(now) if k in locked and locked[k] != now[k]
    ]
    changes += [f"new: {k}" for k in sorted(now.keys() - locked.keys())]
    changes += [f"gone: {k}" for k in sorted(locked.keys() - now.keys())]
    if changes:
        shown = "\n".join(f"  {c}" for c in changes[:20]) + (
            f"\n  ... and {len(changes) - 20} more" if len(changes) > 20 else ""
        )
        raise PlanError(
            f"the stores no longer match the lock file {path}:\n{shown}\n"
            "rerun without --locked to see the new plan, then `xfd lock` to accept it"
        )
