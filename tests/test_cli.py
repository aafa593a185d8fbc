"""The command line, driven through its entry point."""

from __future__ import annotations

import subprocess
import sysconfig
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import obstore
import pytest

from xfd import _core
from xfd.cli import _labels, main

# `xfd plan` runs in a row: it aborted at exit about once in ten before its fix (5 of 50 runs).
RUNS = 50


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


@pytest.mark.parametrize(
    ("arguments", "expected"),
    [
        (["--label", "gpu"], "--label takes KEY=VALUE, as in --label gpu=a100; got 'gpu'"),
        (
            ["--label", "gpu=a 100"],
            "--label 'gpu=a 100': the value 'a 100' must be 1 to 63 letters, digits, '-', '_' or "
            "'.', starting and ending with a letter or digit",
        ),
        (["--label", "=a100"], "--label '=a100': the label name '' must be 1 to 63"),
        (["--label", "gpu="], "--label 'gpu=': the value '' must be 1 to 63"),
        (
            ["--label", "bad_prefix_/gpu=a100"],
            "--label 'bad_prefix_/gpu=a100': the key prefix 'bad_prefix_' must be a DNS name",
        ),
        (["--label", "gpu=a100", "--label", "gpu=h100"], "--label gpu: given twice, as 'a100' and 'h100'"),
        (["--timeout", "0"], "--timeout must be a number of seconds above 0, got 0.0"),
    ],
)
def test_distribute_refuses_bad_labels_and_timeouts_before_planning(tmp_path, capsys, arguments, expected):
    # Planning this manifest would fail on its store (nothing listens there): the options are checked first.
    path = tmp_path / "a.toml"
    path.write_text(
        '[stores.m]\nurl = "s3://b"\nendpoint = "http://127.0.0.1:9"\nallow_http = true\n'
        '[[artifacts]]\nstore = "m"\nkey = "k"\nto = "/k"\n'
    )
    assert main(["distribute", *arguments, str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"xfd: error: {expected}") and err.count("\n") == 1


def test_distribute_takes_labels_with_prefixes():
    assert _labels(["example.com/gpu=a100", "zone=us-east-1a", "tier=A_1.b-2"]) == {
        "example.com/gpu": "a100",
        "zone": "us-east-1a",
        "tier": "A_1.b-2",
    }
    assert _labels(["gpu=a100", "gpu=a100"]) == {"gpu": "a100"}


def test_plan_exits_cleanly_run_after_run(s3, bucket, tmp_path):
    """`xfd plan` used to abort (SIGABRT) after printing a correct plan, about one run in ten: a thread of
    obstore's async runtime still woke the finished event loop while the interpreter shut down."""
    store = s3.store(bucket)
    for index in range(8):
        obstore.put(store, f"data/{index}.bin", b"x" * index)
    manifest = tmp_path / "artifacts.toml"
    manifest.write_text(
        s3.store_toml("m", f"s3://{bucket}") + '[[artifacts]]\nstore = "m"\nprefix = "data"\n'
        'to = "/data"\n[[artifacts]]\nstore = "m"\nkey = "data/7.bin"\nto = "/seven.bin"\n'
    )
    command = [str(Path(sysconfig.get_path("scripts")) / "xfd"), "plan", str(manifest)]

    def plan(_: int) -> subprocess.CompletedProcess[str]:
        return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)

    with ThreadPoolExecutor(max_workers=3) as pool:  # a few at a time: the machine may have few cores
        runs = list(pool.map(plan, range(RUNS)))
    failed = [(run.returncode, run.stderr[-300:]) for run in runs if run.returncode != 0]
    assert not failed, f"{len(failed)} of {RUNS} runs failed: {failed[:3]}"
    assert all(run.stdout.startswith("plan: 2 artifacts, 9 files, 8 unique objects") for run in runs)
