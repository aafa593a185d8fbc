"""The Rust extension's boundary: values and errors as Python sees them."""

from __future__ import annotations

import subprocess
import sys

import pytest

import xfd
from xfd import _core
from xfd.errors import RangeError, XfdError

# BLAKE3 of the empty input, from the BLAKE3 reference test vectors.
EMPTY_BLAKE3 = "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"


def test_version_is_the_workspace_version():
    assert xfd.__version__ == _core.__version__
    assert xfd.__version__.count(".") == 2


def test_empty_range_hashes_to_the_reference_vector(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"some bytes")
    assert _core.hash_file_range(path, 3, 0) == EMPTY_BLAKE3
    assert _core.hash_file_range(path, len(b"some bytes")) == EMPTY_BLAKE3


def test_range_hash_equals_hash_of_a_file_holding_only_that_range(tmp_path):
    data = bytes(range(256)) * 9000
    whole, part = tmp_path / "whole", tmp_path / "part"
    whole.write_bytes(data)
    part.write_bytes(data[1000:1_500_000])
    assert _core.hash_file_range(whole, 1000, 1_499_000) == _core.hash_file_range(part)
    assert _core.hash_file_range(whole, 1000, 1_499_000) != _core.hash_file_range(whole, 1001, 1_499_000)


def test_missing_file_is_a_builtin_file_not_found_error_naming_the_path(tmp_path):
    missing = tmp_path / "missing.bin"
    with pytest.raises(FileNotFoundError) as info:
        _core.hash_file_range(missing)
    assert info.value.filename == str(missing)
    assert "cannot open" in str(info.value)


def test_range_outside_the_file_is_a_range_error(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"0123456789")
    with pytest.raises(RangeError, match=r"range \[8, 8\+3\) is outside .* \(size 10 bytes\)") as info:
        _core.hash_file_range(path, 8, 3)
    assert isinstance(info.value, XfdError) and isinstance(info.value, ValueError)


def test_stub_matches_the_compiled_module():
    result = subprocess.run(
        [sys.executable, "-m", "mypy.stubtest", "xfd._core"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
