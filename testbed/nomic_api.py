"""A loopback stand-in for the Nomic API: the endpoints the nomic client calls, checkable embeddings, faults.

Embeddings are built so results can be checked: an image's vector points along its mean colour (minus grey),
and a text naming a colour ("red", "a green thing") points along that colour; other texts get a fixed
pseudo-random direction. A magenta image (mean colour near (255, 0, 255)) is refused as content, like a
moderation filter, with HTTP 400 for the whole request that carries it.
"""
from __future__ import annotations

import email.parser
import email.policy
import hashlib
import io
import json
import re
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Optional

import numpy as np
from PIL import Image

COLOURS = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255), "yellow": (255, 255, 0),
           "cyan": (0, 255, 255), "white": (255, 255, 255), "black": (0, 0, 0)}
MAGENTA = np.array([255, 0, 255])


def colour_vector(rgb, dim: int) -> list[float]:
    rgb = np.asarray(rgb, dtype=np.float64)
    vector = np.zeros(dim)
    vector[:3] = rgb - rgb.mean()
    vector[3] = 30.0  # keeps grey images away from the zero vector
    return (vector / np.linalg.norm(vector)).tolist()


def text_vector(text: str, dim: int) -> list[float]:
    words = set(re.findall(r"[a-z]+", text.lower()))
    for word, rgb in COLOURS.items():
        if word in words:
            return colour_vector(rgb, dim)
    seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")
    vector = np.random.default_rng(seed).normal(size=dim)
    return (vector / np.linalg.norm(vector)).tolist()


class FakeNomicAPI:
    """Start with `start()`; point the client at `url` through ATLAS_API_PATH. Thread-safe counters and faults."""

    def __init__(self, key: str = "nk-test-0123456789abcdef", dim: int = 768, latency_s: float = 0.0):
        self.key, self.dim, self.latency_s = key, dim, latency_s
        self.requests: Counter = Counter()
        self.images_seen = 0
        self.task_types: set[str] = set()
        self._faults: list[dict] = []
        self._lock = threading.Lock()
        self._server: Optional[ThreadingHTTPServer] = None

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def fail_next(self, count: int, **fault) -> None:
        """The next `count` embedding requests get `fault`: status=429, delay_s=2, malformed=True, drop_one=True."""
        with self._lock:
            self._faults.extend([fault] * count)

    def _next_fault(self) -> dict:
        with self._lock:
            return self._faults.pop(0) if self._faults else {}

    def start(self) -> "FakeNomicAPI":
        api = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output quiet
                pass

            def _reply(self, status: int, body, raw: bool = False):
                data = body if raw else json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _authorized(self) -> bool:
                return self.headers.get("Authorization") == f"Bearer {api.key}"

            def do_GET(self):
                with api._lock:
                    api.requests[self.path] += 1
                if self.path != "/v1/user":
                    return self._reply(404, {"detail": "not found"})
                if not self._authorized():
                    return self._reply(401, {"detail": "Invalid API key"})
                self._reply(200, {"id": "user-1", "organizations": [], "default_organization": None})

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with api._lock:
                    api.requests[self.path] += 1
                if api.latency_s:
                    time.sleep(api.latency_s)
                if not self._authorized():
                    return self._reply(401, {"detail": "Invalid API key"})
                fault = api._next_fault()
                if "delay_s" in fault:
                    time.sleep(fault["delay_s"])
                if "status" in fault:
                    return self._reply(fault["status"], {"detail": f"injected {fault['status']}"})
                if fault.get("malformed"):
                    return self._reply(200, b'{"embeddings": [[0.1, 0.2', raw=True)
                if self.path == "/v1/embedding/text":
                    request = json.loads(body)
                    with api._lock:
                        api.task_types.add(request.get("task_type"))
                    embeddings = [text_vector(text, api.dim) for text in request["texts"]]
                    usage = {"prompt_tokens": sum(len(t.split()) for t in request["texts"])}
                    usage["total_tokens"] = usage["prompt_tokens"]
                    model = request["model"]
                elif self.path == "/v1/embedding/image":
                    model, images = self._multipart(body)
                    means = [np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), float).mean(axis=(0, 1))
                             for data in images]
                    if any(np.abs(mean - MAGENTA).max() < 40 for mean in means):
                        return self._reply(400, {"detail": "image rejected by content policy"})
                    with api._lock:
                        api.images_seen += len(images)
                    embeddings = [colour_vector(mean, api.dim) for mean in means]
                    usage = {"images": len(images), "total_tokens": len(images)}
                else:
                    return self._reply(404, {"detail": "not found"})
                if fault.get("drop_one"):
                    embeddings = embeddings[:-1]
                self._reply(200, {"embeddings": embeddings, "usage": usage, "model": model})

            def _multipart(self, body: bytes) -> tuple[str, list[bytes]]:
                header = f"Content-Type: {self.headers['Content-Type']}\r\n\r\n".encode()
                message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(header + body)
                model, images = "", []
                for part in message.iter_parts():
                    name = part.get_param("name", header="content-disposition")
                    if name == "images":
                        images.append(part.get_payload(decode=True))
                    elif name == "model":
                        model = part.get_payload(decode=True).decode()
                return model, images

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server:
            self._server.shutdown()
            self._server.server_close()
