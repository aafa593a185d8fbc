"""The rate caps of ``[settings]``: ``origin_rate``, ``origin_request_rate``, ``upload_rate``."""

from __future__ import annotations

import json

import pytest

from xfd import Manifest
from xfd.errors import ManifestError
from xfd.manifest.units import format_rate, parse_rate

MiB = 1 << 20
STORE = '[stores.s]\nurl = "s3://b"\n'


def problems(text: str) -> list[str]:
    with pytest.raises(ManifestError) as info:
        Manifest.loads(text, "artifacts.toml")
    return [f"{path}: {message}" for path, message in info.value.problems]


@pytest.mark.parametrize(
    ("text", "rate"),
    [
        ("200MB/s", 200_000_000),
        ("200 MB/s", 200_000_000),
        ("1.5 GiB/s", 3 << 29),
        ("64MiB", 64 * MiB),
        ("1000/s", 1000),
        (12345, 12345),
        (0, 0),
    ],
)
def test_rates_read_like_sizes_per_second(text, rate):
    assert parse_rate(text) == rate


def test_rates_are_written_in_their_largest_exact_unit():
    assert [format_rate(r) for r in (16_000_000, 64 * MiB, 10**9, 1 << 30, 1536)] == [
        "16MB/s",
        "64MiB/s",
        "1GB/s",
        "1GiB/s",
        "1536/s",
    ]


def test_the_caps_are_off_by_default_and_left_out_of_the_toml():
    manifest = Manifest.loads(STORE)
    assert (manifest.settings.origin_rate, manifest.settings.origin_request_rate, manifest.settings.upload_rate) == (
        0,
        0,
        0,
    )
    assert "rate" not in manifest.to_toml()


def test_the_caps_load_build_and_round_trip():
    text = '[settings]\norigin_rate = "200MB/s"\norigin_request_rate = 500\nupload_rate = "1 GiB/s"\n' + STORE
    manifest = Manifest.loads(text)
    assert manifest.settings.origin_rate == 200_000_000
    assert manifest.settings.origin_request_rate == 500
    assert manifest.settings.upload_rate == 1 << 30
    written = manifest.to_toml()
    assert 'origin_rate = "200MB/s"' in written and 'upload_rate = "1GiB/s"' in written
    assert Manifest.loads(written) == manifest
    built = (
        Manifest.builder()
        .settings(origin_rate="200 MB/s", origin_request_rate=500, upload_rate=1 << 30)
        .store("s", "s3://b")
        .build()
    )
    assert built == manifest


@pytest.mark.parametrize(
    ("setting", "expected"),
    [
        (
            'origin_rate = "fast"',
            "settings.origin_rate: must be a rate such as 200MB/s, 1GiB/s or a number of bytes per second (got 'fast')",
        ),
        (
            "origin_rate = -5",
            "settings.origin_rate: must be a rate of 0 (uncapped) or more, such as 200MB/s (got -5 bytes per second)",
        ),
        (
            "upload_rate = true",
            "settings.upload_rate: must be a rate such as 200MB/s, 1GiB/s or a number of bytes per second (got True)",
        ),
        (
            'origin_rate = "0.5/s"',
            "settings.origin_rate: must be a rate such as 200MB/s, 1GiB/s or a number of bytes per second (got '0.5/s')",
        ),
        (
            "origin_request_rate = -1",
            "settings.origin_request_rate: must be a number of GET requests per second, 0 (uncapped) or more (got -1)",
        ),
        ('origin_request_rate = "100/s"', "settings.origin_request_rate: must be an integer (got '100/s')"),
        (
            'upload_rate = "4MiB/s"',
            "settings.upload_rate: gives each of the 8 upload slots less than 2MiB/s, the pace below which peers "
            "take a transfer for stalled; raise it to at least 16MiB/s, or lower upload_slots to 2 (got 4MiB/s)",
        ),
        (
            'upload_rate = "1MB/s"',
            "settings.upload_rate: gives each of the 8 upload slots less than 2MiB/s, the pace below which peers "
            "take a transfer for stalled; raise it to at least 16MiB/s (got 1MB/s)",
        ),
    ],
)
def test_a_bad_cap_is_named_with_its_path_and_the_fix(setting, expected):
    assert problems(f"[settings]\n{setting}\n{STORE}") == [expected]


def test_fewer_upload_slots_make_a_lower_upload_rate_valid():
    manifest = Manifest.loads(f'[settings]\nupload_slots = 2\nupload_rate = "4MiB/s"\n{STORE}')
    assert manifest.settings.upload_rate == 4 * MiB


def test_a_bad_cap_hides_no_other_setting():
    found = problems(f'[settings]\norigin_rate = "x"\nupload_rate = -1\norigin_request_rate = 1.5\n{STORE}')
    assert [line.split(":")[0] for line in found] == [
        "settings.origin_rate",
        "settings.upload_rate",
        "settings.origin_request_rate",
    ]


def test_the_caps_reach_the_plan_json_and_the_engine(s3, bucket, tmp_path):
    import obstore

    obstore.put(s3.store(bucket), "k.bin", b"x" * 1000)
    manifest = (
        Manifest.builder()
        .store("m", f"s3://{bucket}", **s3.manifest_options())
        .settings(origin_rate="100MB/s", origin_request_rate=50, upload_rate="64MiB/s")
        .object("m", "k.bin", to="/k.bin")
        .build()
    )
    plan = manifest.plan()
    settings = json.loads(plan.to_json())["settings"]
    assert (settings["origin_rate"], settings["origin_request_rate"], settings["upload_rate"]) == (
        100_000_000,
        50,
        64 * MiB,
    )
    from xfd.engine import node_engine
    from xfd.plan import Plan

    assert Plan.from_json(plan.to_json()) == plan
    node_engine(plan.to_json(), manifest.stores, tmp_path).close()  # Rust's plan has the fields (unknown ones fail)
