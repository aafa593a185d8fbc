"""A real S3-protocol server on loopback (moto's threaded server), for demos and tests."""

from __future__ import annotations

import abc
import logging
from typing import Any, Self

from xfd.errors import ConfigError

# Fixed, obviously fake credentials: moto accepts any, and they let the same URLs work with signing on.
ACCESS_KEY_ID = "xfd-sandbox"
SECRET_ACCESS_KEY = "xfd-sandbox-secret"
REGION = "us-east-1"


class S3Sandbox(abc.ABC):
    """What every local S3-protocol server of xfd.testing offers: options and stores that reach it."""

    access_key_id = ACCESS_KEY_ID
    secret_access_key = SECRET_ACCESS_KEY

    @property
    @abc.abstractmethod
    def endpoint(self) -> str:
        """``http://host:port`` of the running server."""

    @abc.abstractmethod
    def start(self) -> Self:
        """Starts the server; returns it."""

    @abc.abstractmethod
    def stop(self) -> None:
        """Stops the server (and removes what it stored)."""

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def store_options(self, endpoint: str | None = None) -> dict[str, Any]:
        """obstore ``S3Store`` keyword options that reach this server (or ``endpoint``, e.g. a proxy)."""
        return {
            "endpoint": endpoint or self.endpoint,
            "access_key_id": self.access_key_id,
            "secret_access_key": self.secret_access_key,
            "region": REGION,
            "virtual_hosted_style_request": False,
            "client_options": {"allow_http": True},
        }

    def manifest_options(self, endpoint: str | None = None) -> dict[str, Any]:
        """The same options in the manifest's flat vocabulary: ``builder().store(name, url, **options)``."""
        options = self.store_options(endpoint)
        return {**options.pop("client_options"), **options}

    def store_toml(self, name: str, url: str, endpoint: str | None = None) -> str:
        """A ``[stores.NAME]`` table for a TOML manifest."""
        import tomli_w

        return tomli_w.dumps({"stores": {name: {"url": url, **self.manifest_options(endpoint)}}})

    def store(self, bucket: str, endpoint: str | None = None) -> Any:
        """An obstore ``S3Store`` for ``bucket`` on this server (or through ``endpoint``)."""
        from obstore.store import S3Store

        return S3Store(bucket, **self.store_options(endpoint))

    def client(self, endpoint: str | None = None) -> Any:
        """A boto3 S3 client for this server (or for ``endpoint``, e.g. a proxy in front of it): for what
        obstore does not do, such as keys it would refuse or normalise, and presigned URLs."""
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=endpoint or self.endpoint,
            aws_access_key_id=self.access_key_id,
            aws_secret_access_key=self.secret_access_key,
            region_name=REGION,
        )

    def create_bucket(self, bucket: str) -> Any:
        """Creates ``bucket`` through the S3 API and returns a store for it."""
        self.client().create_bucket(Bucket=bucket)
        return self.store(bucket)


class LocalS3(S3Sandbox):
    """An S3-protocol server on ``127.0.0.1`` and a free port, running in this process.

    moto serves each GET by reading the whole object under a per-key lock, so it suits correctness
    work with objects up to a few hundred MiB; benchmarks need a server whose ranged GETs cost O(range).

    Use as a context manager, or call :meth:`start` and :meth:`stop`.
    """

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self.port: int | None = None
        self._server: Any = None

    def start(self) -> LocalS3:
        try:
            from moto.server import ThreadedMotoServer
        except ImportError as exc:  # pragma: no cover - depends on the installed extras
            raise ConfigError(
                "the local S3 server needs moto: install the demo extra with `pip install 'xfd[demo]'`"
            ) from exc
        # werkzeug logs one line per request at INFO: thousands of lines for one ranged download.
        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        self._server = ThreadedMotoServer(ip_address=self.host, port=0, verbose=False)
        self._server.start()
        self.host, self.port = self._server.get_host_and_port()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None

    @property
    def endpoint(self) -> str:
        if self.port is None:
            raise ConfigError("the local S3 server is not started: call start() or use it in a `with` block")
        return f"http://{self.host}:{self.port}"
