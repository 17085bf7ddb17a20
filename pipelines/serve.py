"""Answers searches of a vector index over HTTP (pipelines/index.py builds one), with a search page: the index and
the backend's text tower loaded once, in this process.

python -m pipelines.serve --index out/index [--host 127.0.0.1] [--port 8080] [--backend ...]

    GET  /                        the search page; /?q=TEXT opens it with that search run (a link shares it)
    GET  /search?q=TEXT&k=N       {"hits": [{"uri", "score", "labels", "top_prob", "width", "height"}], "took_ms"}
                                  (&label=L: only images with that label)
    POST /search                  {"vector": [...], "k": N} or {"uri": "...", "k": N}: images like a vector or an
                                  indexed image ("label" too)
    GET  /labels                  {"labels": [[label, images], ...]}, commonest first
    GET  /thumb?uri=URI           a JPEG thumbnail of an indexed image, read from its store
    GET  /health                  {"images": N, "model": ...}

A bad request gets 400 (or 404 for a uri the index does not hold) and {"error": one line}; k is at most 1000 and a
query at most 1000 characters. Needs the `search` extra: pip install 'beam-zero-shot-labels[search]'.
"""
from __future__ import annotations

import argparse
import functools
import io
import json
import socket
import sys
import time
from importlib import resources
from typing import Any, Optional, Sequence

from pipelines.cli import ConfigError, OneLineParser, exit_job
from pipelines.options import add_backend_options, checked_backend
from transforms import files, internals
from transforms.decode import MAX_ASPECT, decode_image
from transforms.faults import one_line
from transforms.vector_index import MAX_K, Hit, NotInIndex, SearchRequestError, VectorIndex

LOOPBACK = ("127.0.0.1", "localhost", "::1")
THUMB_SIZE = 256  # pixels, the longer side
MAX_BODY = 1 << 20  # bytes of a POST body: a vector of 768 numbers takes about 15 KB
THUMBS_CACHED = 2048


def hit_json(hit: Hit) -> dict[str, Any]:
    return {"uri": hit.uri, "score": round(hit.score, 6), "labels": hit.labels, "top_prob": hit.top_prob,
            "width": hit.width, "height": hit.height}


def app(index: VectorIndex):
    """The Starlette application answering searches of `index`."""
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.requests import Request
    from starlette.responses import HTMLResponse, JSONResponse, Response
    from starlette.routing import Route

    page = resources.files("pipelines").joinpath("search_page.html").read_text(encoding="utf-8")

    def refused(message: str, status: int = 400) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status)

    def whole_number(value: Any, name: str, default: int) -> int:
        if value is None:
            return default
        if isinstance(value, str) and value.strip().isdigit() and len(value.strip()) < 10:
            return int(value)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise SearchRequestError(f"{name} must be a whole number from 1 to {MAX_K}, got {str(value)[:40]!r}")

    async def answer(search) -> JSONResponse:
        started = time.perf_counter()
        try:
            hits = await run_in_threadpool(search)
        except SearchRequestError as e:
            return refused(str(e), 404 if isinstance(e, NotInIndex) else 400)
        took = (time.perf_counter() - started) * 1000
        return JSONResponse({"hits": [hit_json(hit) for hit in hits], "took_ms": round(took, 3)})

    async def get_search(request: Request) -> Response:
        query = request.query_params.get("q")
        try:
            k = whole_number(request.query_params.get("k"), "k", 20)
        except SearchRequestError as e:
            return refused(str(e))
        label = request.query_params.get("label") or None
        if query is None:
            return refused("give the text to search for as ?q=TEXT")
        return await answer(lambda: index.search_text(query, k, label))

    async def post_search(request: Request) -> Response:
        if int(request.headers.get("content-length") or 0) > MAX_BODY:
            return refused(f"the body is larger than {MAX_BODY} bytes")
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_BODY:
                return refused(f"the body is larger than {MAX_BODY} bytes")
        try:
            asked = json.loads(body)
        except ValueError as e:
            return refused(f"the body is not JSON: {one_line(e)}")
        if not isinstance(asked, dict) or ("vector" in asked) == ("uri" in asked):
            return refused('the body must be {"vector": [...], "k": N} or {"uri": "...", "k": N}')
        try:
            k = whole_number(asked.get("k"), "k", 20)
        except SearchRequestError as e:
            return refused(str(e))
        label = asked.get("label") or None
        if label is not None and not isinstance(label, str):
            return refused("label must be a string")
        if "uri" in asked:
            uri = asked["uri"]
            if not isinstance(uri, str):
                return refused("uri must be a string")
            return await answer(lambda: index.search_uri(uri, k, label))
        vector = asked["vector"]
        if not isinstance(vector, list) or not all(isinstance(x, (int, float)) and not isinstance(x, bool)
                                                   for x in vector):
            return refused("vector must be a list of numbers")
        return await answer(lambda: index.search(vector, k, label))

    async def search(request: Request) -> Response:
        return await (post_search(request) if request.method == "POST" else get_search(request))

    async def labels(_: Request) -> Response:
        return JSONResponse({"labels": index.labels()})

    async def health(_: Request) -> Response:
        return JSONResponse({"images": len(index), "model": index.manifest.model, "kind": index.facts.kind,
                             "recall_at_10": index.facts.recall_at_10})

    async def home(_: Request) -> Response:
        return HTMLResponse(page, headers={"Cache-Control": "no-cache"})

    async def thumb(request: Request) -> Response:
        uri = request.query_params.get("uri", "")
        if uri not in index:  # only what the index holds: never a path a request makes up
            return refused(f"{uri[:200]!r} is not in the index", 404)
        try:
            data = await run_in_threadpool(thumbnail, uri)
        except Exception as e:  # noqa: BLE001 - gone from its store, not an image any more: that image's answer
            return refused(f"cannot read {uri[:200]!r}: {one_line(e)[:300]}", 404)
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "max-age=3600"})

    return Starlette(routes=[Route("/", home), Route("/search", search, methods=["GET", "POST"]),
                             Route("/labels", labels), Route("/thumb", thumb), Route("/health", health)])


@functools.lru_cache(maxsize=THUMBS_CACHED)
def thumbnail(uri: str) -> bytes:
    """A JPEG of the image at `uri`, decoded as the jobs decode one (upright, RGB with transparency over white, the
    same pixel limit, a JPEG at a fraction of its size), at most THUMB_SIZE pixels a side."""
    from PIL import Image

    # A shorter side of at least THUMB_SIZE / MAX_ASPECT is what keeps the longer one at THUMB_SIZE at most.
    image, _, _ = decode_image(files.read(uri), Image.MAX_IMAGE_PIXELS, THUMB_SIZE, int(THUMB_SIZE / MAX_ASPECT))
    out = io.BytesIO()
    image.save(out, "JPEG", quality=85)
    return out.getvalue()


def parser() -> argparse.ArgumentParser:
    from pipelines import prog

    built = OneLineParser(prog=prog("serve"), description=__doc__.strip().splitlines()[0], allow_abbrev=False)
    built.add_argument("--index", required=True, help="folder of a finished index (zero-shot-labels index)")
    built.add_argument("--host", default="127.0.0.1",
                       help="address to listen on (default 127.0.0.1: this machine only; the server has no "
                            "authentication, so another address shows the index to whoever reaches it)")
    built.add_argument("--port", type=int, default=8080, help="port (default 8080)")
    add_backend_options(built)
    return built


def check_address(host: str, port: int) -> None:
    """ConfigError unless this process can listen on host:port now (a port another server holds, an address this
    machine does not have): said in one line before the index is loaded, not by uvicorn after."""
    if not 1 <= port <= 65535:
        raise ConfigError(f"--port must be from 1 to 65535, got {port}")
    try:
        with socket.create_server((host, port)):
            pass
    except OSError as e:
        raise ConfigError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None


def open_index(args: argparse.Namespace, beam_args: Sequence[str]) -> VectorIndex:
    """The index --index names, with the backend (as configured by the flags) for its text queries; ConfigError."""
    from pipelines.index import check_search_extra

    check_search_extra("starlette", "uvicorn")
    backend = checked_backend(args, beam_args)
    try:
        return VectorIndex.open(args.index, backend)
    except Exception as e:  # noqa: BLE001 - no index there, another model, unreadable: one line
        raise ConfigError(f"--index {args.index!r}: {one_line(e)}") from None


def main(argv: Optional[Sequence[str]] = None) -> int:
    from pipelines.runner import parse

    with internals.job_logging(True):
        try:
            _, args, beam_args = parse(parser(), argv, ())
            check_address(args.host, args.port)
            index = open_index(args, beam_args)
        except ConfigError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    if args.host not in LOOPBACK:
        print(f"warning: listening on {args.host}: the server has no authentication, so anyone who reaches this "
              "address can search the index and see its images", file=sys.stderr)
    import uvicorn  # checked with the extra, in open_index

    index.embed_text("warm up")  # the first text query should not pay for loading the text tower
    print(f"serving {len(index):,} images of {args.index} ({index.facts.kind}, recall@10 "
          f"{index.facts.recall_at_10:.3f}) on http://{args.host}:{args.port}/  (Ctrl-C stops)", flush=True)
    uvicorn.run(app(index), host=args.host, port=args.port, log_level="warning", access_log=False)
    return 0


if __name__ == "__main__":
    exit_job(main())
