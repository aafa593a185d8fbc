"""Node roots: how an absolute destination maps onto each node."""

from __future__ import annotations

from pathlib import Path

import pytest

from xfd.errors import ConfigError
from xfd.nodes import NODE_ROOT_ENV, NODE_ROOT_LABEL, localize, resolve_node_root


@pytest.mark.parametrize(
    ("environ", "labels", "expected"),
    [
        ({}, {}, "/"),
        ({}, {NODE_ROOT_LABEL: "/srv/a"}, "/srv/a"),
        ({NODE_ROOT_ENV: "/srv/env"}, {NODE_ROOT_LABEL: "/srv/a"}, "/srv/env"),
        ({NODE_ROOT_ENV: ""}, {NODE_ROOT_LABEL: "/srv/a"}, "/srv/a"),
    ],
)
def test_environment_wins_over_label_wins_over_slash(environ, labels, expected):
    assert resolve_node_root(environ, labels) == Path(expected)


@pytest.mark.parametrize(
    ("environ", "labels", "message"),
    [
        ({NODE_ROOT_ENV: "relative/dir"}, {}, "environment variable XFD_NODE_ROOT is 'relative/dir'"),
        ({}, {NODE_ROOT_LABEL: "x"}, "Ray node label 'xfd-root' is 'x'"),
    ],
)
def test_relative_roots_are_refused_naming_their_source(environ, labels, message):
    with pytest.raises(ConfigError) as info:
        resolve_node_root(environ, labels)
    assert str(info.value) == f"{message}: a node root must be an absolute directory path"


def test_localize_puts_the_destination_under_the_root():
    assert localize("/models/llama/model.bin", Path("/srv/node-1")) == Path("/srv/node-1/models/llama/model.bin")
    assert localize("/models/x", Path("/")) == Path("/models/x")


def test_localize_refuses_relative_destinations():
    with pytest.raises(ConfigError, match="must be an absolute path"):
        localize("models/x", Path("/srv"))


def test_localize_refuses_parent_segments_that_would_leave_the_root():
    with pytest.raises(ConfigError, match="must not contain '..' segments"):
        localize("/models/../../etc/passwd", Path("/srv/node-1"))
