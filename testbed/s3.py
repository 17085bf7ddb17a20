"""moto's S3 server on a free 127.0.0.1 port, and the request lines it logs: the store the tests and the bucket
benchmarks run against."""
from __future__ import annotations

import logging
import re
import socket
from collections import Counter


class RequestLog(logging.Handler):
    """The request lines a server logs ("GET /bkt/photos/a.jpg HTTP/1.1"), as the protocol server saw them."""

    def __init__(self, logger: str):
        super().__init__()
        self.lines: list[str] = []
        self.logger = logging.getLogger(logger)
        self.logger.addHandler(self)
        self.logger.setLevel(logging.INFO)

    def emit(self, record):
        self.lines.append(record.getMessage())

    def gets(self, pattern: str) -> Counter:
        """How many GETs each object matching `pattern` (its first group) had."""
        return Counter(match[1] for line in self.lines if (match := re.search(pattern, line)) and "GET" in line)

    def close(self):
        self.logger.removeHandler(self)
        super().close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def s3_server():
    """(moto's S3 server on a free 127.0.0.1 port, its endpoint URL, its request log), empty."""
    import requests
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=free_port(), verbose=True)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    requests.post(f"{endpoint}/moto-api/reset", timeout=30)  # moto keeps its buckets per process, not per server
    return server, endpoint, RequestLog("werkzeug")
