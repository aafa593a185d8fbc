"""Self-contained stand-ins for the outside world: a local S3-protocol server and a counting proxy.

Used by ``xfd demo``, by the test suite, and by anyone who wants to try xfd on a laptop. Needs the
``demo`` extra (``pip install 'xfd[demo]'``), which brings the moto S3 server.
"""

from xfd.sandbox.proxy import CountingProxy, OriginTraffic, RequestRecord
from xfd.sandbox.s3 import LocalS3

__all__ = ["CountingProxy", "LocalS3", "OriginTraffic", "RequestRecord"]
