"""The command line, driven through its entry point."""

from __future__ import annotations

import pytest

from xfd import _core
from xfd.cli import main


def test_hash_prints_the_digest_of_the_range(tmp_path, capsys):
    path = tmp_path / "f"
    path.write_bytes(b"hello world")
    assert main(["hash", str(path), "--offset", "6", "--length", "5"]) == 0
    assert capsys.readouterr().out.strip() == _core.hash_file_range(path, 6, 5)


def test_errors_are_one_line_on_stderr_with_exit_code_2(tmp_path, capsys):
    path = tmp_path / "f"
    path.write_bytes(b"abc")
    assert main(["hash", str(path), "--offset", "5"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("xfd: error: range [5, 5+0) is outside")
    assert err.count("\n") == 1


def test_unknown_command_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as info:
        main(["nonsense"])
    assert info.value.code == 2
    assert "invalid choice: 'nonsense'" in capsys.readouterr().err
