"""A Manifest is valid however it is made: ``attrs.evolve`` (or the constructor) raises the same
path-addressed ManifestError that loading the same manifest from TOML raises."""

from __future__ import annotations

import attrs
import pytest

import xfd
from xfd.errors import ManifestError

TOML = """\
[settings]
node_parallelism = {parallelism}

[stores.models]
url = "s3://bucket/models"

[[artifacts]]
store = "{store}"
key = "model.bin"
to = "/models/model.bin"
"""


def loading_error(**values: object) -> ManifestError:
    with pytest.raises(ManifestError) as raised:
        xfd.Manifest.loads(TOML.format(**{"parallelism": 8, "store": "models", **values}), "artifacts.toml")
    return raised.value


@pytest.fixture
def manifest() -> xfd.Manifest:
    return xfd.Manifest.loads(TOML.format(parallelism=8, store="models"), "artifacts.toml")


def test_an_evolved_setting_out_of_range_raises_what_loading_it_raises(manifest: xfd.Manifest) -> None:
    with pytest.raises(ManifestError) as raised:
        attrs.evolve(manifest, settings=attrs.evolve(manifest.settings, node_parallelism=0))
    assert (
        str(raised.value)
        == str(loading_error(parallelism=0))
        == ("artifacts.toml: settings.node_parallelism: must be between 1 and 1024 (got 0)")
    )
    assert raised.value.problems == [("settings.node_parallelism", "must be between 1 and 1024 (got 0)")]


def test_an_evolved_artifact_naming_no_store_raises_what_loading_it_raises(manifest: xfd.Manifest) -> None:
    artifact = attrs.evolve(manifest.artifacts[0], store="model")
    with pytest.raises(ManifestError) as raised:
        attrs.evolve(manifest, artifacts=(artifact,))
    assert (
        str(raised.value)
        == str(loading_error(store="model"))
        == ("artifacts.toml: artifacts[0].store: no store named 'model'; did you mean 'models'? (stores: models)")
    )


def test_evolving_keeps_the_users_class_and_a_valid_change_passes(manifest: xfd.Manifest) -> None:
    evolved = attrs.evolve(manifest, settings=attrs.evolve(manifest.settings, node_parallelism=16))
    assert type(evolved) is xfd.Manifest and evolved.settings.node_parallelism == 16
    assert type(xfd.Manifest.builder().build()) is xfd.Manifest
