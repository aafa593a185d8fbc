"""``xfd.testing``: what it offers without Ray, and the one way fault rules reach a run.

Nothing here starts Ray: the coordinator is built, never run.
"""

from __future__ import annotations

import inspect
import subprocess
import sys
import threading

import pytest

import xfd
import xfd.testing
from xfd.errors import ConfigError
from xfd.testing import faults


@pytest.fixture
def planned(tmp_path):
    (tmp_path / "origin").mkdir()
    (tmp_path / "origin" / "model.bin").write_bytes(b"x" * 1000)
    manifest = (
        xfd.Manifest.builder()
        .store("local", (tmp_path / "origin").as_uri())
        .object("local", "model.bin", to="/models/model.bin")
        .build()
    )
    return manifest, manifest.plan()


def coordinator_faults(planned) -> dict[str, str]:
    """The fault rules a run started here would give its nodes."""
    from xfd.runtime.coordinator import Coordinator

    manifest, plan = planned
    return Coordinator(plan, manifest.stores, node_ids=["node-a", "node-b"]).faults


def test_a_run_started_inside_the_block_gets_the_rules_and_none_other_does(planned):
    with faults({"node-a": "publish:abort"}):
        inside = coordinator_faults(planned)
        seen_by_another_thread = []
        thread = threading.Thread(target=lambda: seen_by_another_thread.append(coordinator_faults(planned)))
        thread.start()
        thread.join()
    assert inside == {"node-a": "publish:abort"}
    assert seen_by_another_thread == [{}]
    assert coordinator_faults(planned) == {}


def test_no_public_entry_point_takes_fault_rules():
    from xfd.runtime.distribute import Distribution, distribute

    for entry in (xfd.Manifest.distribute, distribute, Distribution.__init__):
        assert "faults" not in inspect.signature(entry).parameters, entry.__qualname__


@pytest.mark.parametrize(
    "rules, message",
    [
        (
            {"node-a": 3},
            "node ids and rules must be non-empty strings, such as {node_id: 'publish:abort'}; got 'node-a': 3",
        ),
        ({"": "serve:corrupt"}, "got '': 'serve:corrupt'"),
        (["publish:abort"], "faults: expected a dict of node id -> rules such as {node_id: 'publish:abort'}, got list"),
    ],
)
def test_rules_that_are_not_a_dict_of_strings_are_refused_before_any_run(rules, message):
    with pytest.raises(ConfigError) as caught, faults(rules):
        pass
    assert message in str(caught.value)


def test_the_stand_ins_come_without_ray_and_local_cluster_is_the_runtimes():
    code = (
        "import sys, xfd.testing; from xfd.testing import LocalS3, CountingProxy, tar_gz, free_port, faults; "
        "print('ray' in sys.modules)"
    )
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "False\n"

    from xfd.runtime import LocalCluster

    assert xfd.testing.LocalCluster is LocalCluster
    with pytest.raises(AttributeError, match="no attribute 'LocalClustre'"):
        xfd.testing.LocalClustre  # noqa: B018 - the attribute access is the test
