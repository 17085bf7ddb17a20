"""The vector index (zero-shot-labels index), its Python API, `search --index`, and the search server with its page:
built from a real kept run of the sample photos, and from clustered vectors brought with --vectors."""
from __future__ import annotations

import base64
import concurrent.futures
import contextlib
import http.client
import io
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipelines import index as index_job
from pipelines import search
from testbed.s3 import free_port
from transforms.backends import get_backend
from transforms.run_folder import finished_manifest, read_run
from transforms.vector_index import MAX_K, SearchRequestError, VectorIndex

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
QUERIES = ("a dog", "a cat", "a rocket", "a cup of coffee")


@pytest.fixture(scope="module")
def photo_index(finished_run, tmp_path_factory) -> Path:
    """The index of the kept run of the sample photos (labels `general`)."""
    folder = tmp_path_factory.mktemp("index") / "index"
    assert index_job.main(["--embeddings", str(finished_run), "--output", str(folder)]) == 0
    return folder


def clustered(count: int, seed: int, dimension: int = 384, centres: int = 40) -> np.ndarray:
    rng = np.random.default_rng(seed)
    middle = rng.standard_normal((centres, dimension)).astype(np.float32)
    vectors = middle[rng.integers(0, centres, count)] + 0.6 * rng.standard_normal((count, dimension)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def vectors_file(path: Path, vectors: np.ndarray, first: int = 0) -> Path:
    """Parquet of vectors as a user brings them: uri and embedding (a plain list column), nothing else."""
    pq.write_table(pa.table({"uri": [f"img/{i:05d}.jpg" for i in range(first, first + len(vectors))],
                             "embedding": [vector.tolist() for vector in vectors]}), path)
    return path


def test_each_row_carries_what_its_run_knew(photo_index, finished_run):
    results = {row["uri"]: row for row in read_run(str(finished_run))}
    rows = read_run(str(photo_index), "rows")
    assert sorted(row["uri"] for row in rows) == sorted(results)
    for row in rows:
        labeled = results[row["uri"]]
        assert row["labels"] == labeled["labels"]
        assert row["top_prob"] == pytest.approx(labeled["probs"][0])
        assert (row["width"], row["height"], row["sha256"]) == (labeled["width"], labeled["height"],
                                                                labeled["sha256"])
        assert np.linalg.norm(row["embedding"]) == pytest.approx(1.0, abs=1e-5)
    facts = finished_manifest(str(photo_index)).details["ann"]
    assert (facts["kind"], facts["vectors"], facts["recall_at_10"]) == ("exact", 7, 1.0)


def test_the_index_answers_as_the_scan_does(photo_index, finished_run, tmp_path):
    """search --index and search --embeddings (the exact scan) give the same images in the same order."""
    answers = {}
    for source in ("--index", "--embeddings"):
        folder = photo_index if source == "--index" else finished_run
        out = tmp_path / source.strip("-")
        argv = [source, str(folder), "--images_per_query", "5", "--output", str(out)]
        assert search.main([*argv, *(arg for query in QUERIES for arg in ("--query", query))]) == 0
        answers[source] = sorted((row["query"], row["rank"], row["uri"], round(row["score"], 4))
                                 for row in read_run(str(out)))
    assert answers["--index"] == answers["--embeddings"]
    assert len(answers["--index"]) == 5 * len(QUERIES)


def test_python_api_searches_by_text_vector_uri_and_label(photo_index):
    index = VectorIndex.open(str(photo_index), get_backend("local"))
    assert len(index) == 7
    cat = index.search_text("a cat", k=3)
    assert cat[0].uri.endswith("chelsea.jpg") and cat[0].score > cat[1].score > cat[2].score
    assert index.search(index.vector_of(cat[0].uri), k=1)[0].uri == cat[0].uri
    rocket = next(uri for uri in index._uris if uri.endswith("rocket.jpg"))
    like = index.search_uri(rocket, k=7)
    assert like[0].uri == rocket and like[0].score == pytest.approx(1.0, abs=1e-5) and len(like) == 7
    label, count = index.labels()[0]
    only = index.search_text("a cat", k=7, label=label)
    assert len(only) == count and all(hit.labels[0] == label for hit in only)
    assert index.search_text("a cat", k=3, label="no such label") == []
    for wrong, message in (([0.1] * 5, "has 5 numbers"), ([0.0] * 384, "not all zeros")):
        with pytest.raises(SearchRequestError, match=message):
            index.search(wrong)
    with pytest.raises(SearchRequestError, match=f"from 1 to {MAX_K}"):
        index.search_text("a cat", k=10**9)
    with pytest.raises(SearchRequestError, match="not in the index"):
        index.search_uri("../../etc/passwd")


def test_an_inverted_file_index_measures_its_recall_and_finds_what_the_scan_finds(tmp_path):
    vectors = clustered(6000, seed=1)
    source = vectors_file(tmp_path / "vectors.parquet", vectors)
    out = tmp_path / "index"
    assert index_job.main(["--vectors", str(source), "--output", str(out), "--exact_below", "1000"]) == 0
    facts = finished_manifest(str(out)).details["ann"]
    assert facts["kind"] == "ivf" and facts["lists"] == 256 and facts["recall_at_10"] >= 0.99
    assert 1 <= facts["probes"] <= facts["lists"] and facts["recall_queries"] == 200
    index = VectorIndex.open(str(out))
    rng = np.random.default_rng(2)  # queries near stored images, as "images like this one" asks
    queries = vectors[rng.choice(len(vectors), 50)] + 0.02 * rng.standard_normal((50, 384))
    recalls = []
    for query in queries:
        exact = {f"img/{i:05d}.jpg" for i in np.argsort(-(vectors @ query))[:10]}
        recalls.append(len(exact & {hit.uri for hit in index.search(query, 10)}) / 10)
    assert np.mean(recalls) >= 0.95


def test_skip_existing_adds_only_the_new_vectors_without_training_again(tmp_path):
    first, second = clustered(4000, seed=3), clustered(500, seed=4)
    out = tmp_path / "index"
    assert index_job.main(["--vectors", str(vectors_file(tmp_path / "a.parquet", first)), "--output", str(out),
                           "--exact_below", "1000"]) == 0
    before = finished_manifest(str(out)).details["ann"]
    # The second file holds 100 of the images already indexed and 500 new ones.
    both = vectors_file(tmp_path / "b.parquet", np.concatenate([first[:100], second]))
    pq.write_table(pq.read_table(both).set_column(0, "uri", pa.array(
        [f"img/{i:05d}.jpg" for i in range(100)] + [f"img/{i:05d}.jpg" for i in range(4000, 4500)])), both)
    assert index_job.main(["--vectors", str(both), "--output", str(out), "--overwrite", "--skip_existing", str(out),
                           "--exact_below", "1000"]) == 0
    after = finished_manifest(str(out)).details["ann"]
    assert before["kind"] == "ivf"
    assert (after["vectors"], after["added"], after["lists"]) == (4500, 500, before["lists"])
    assert after["order"][:len(before["order"])] == before["order"]
    index = VectorIndex.open(str(out))
    assert index.search(second[7], 1)[0].uri == "img/04007.jpg"
    assert index.search(first[7], 1)[0].uri == "img/00007.jpg"


@pytest.mark.parametrize("argv, message", [
    ([], "give --embeddings (a kept run) or --vectors"),
    (["--vectors", "{tmp}/none-*.parquet"], "matches no Parquet file"),
    (["--vectors", "{tmp}/short.parquet"], "holds vectors of 5 numbers; the backend's have 384"),
    (["--vectors", "{tmp}/short.parquet", "--format", "csv"], "an index is written as Parquet"),
    (["--vectors", "{tmp}/short.parquet", "--labels_from", "{tmp}"], "--vectors carry no labels"),
])
def test_a_configuration_the_index_cannot_use_stops_it_before_it_starts(argv, message, tmp_path, capsys):
    vectors_file(tmp_path / "short.parquet", np.ones((3, 5), np.float32))
    argv = [arg.replace("{tmp}", str(tmp_path)) for arg in argv]
    assert index_job.main([*argv, "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_skip_existing_and_search_refuse_a_run_that_is_no_index(finished_run, tmp_path, capsys):
    vectors_file(tmp_path / "v.parquet", clustered(10, seed=5))
    assert index_job.main(["--vectors", str(tmp_path / "v.parquet"), "--output", str(tmp_path / "out"),
                           "--skip_existing", str(finished_run)]) == 2
    assert "is a classify run, not an index" in capsys.readouterr().err
    assert search.main(["--index", str(finished_run), "--query", "a cat", "--output", str(tmp_path / "s")]) == 2
    assert "is a classify run, not an index" in capsys.readouterr().err


def test_skip_existing_and_search_refuse_an_index_of_another_model(photo_index, tmp_path, capsys):
    another_model = ["--local_full_evidence", "0"]  # a setting of local that makes its model id another
    vectors_file(tmp_path / "v.parquet", clustered(10, seed=5))
    assert index_job.main(["--vectors", str(tmp_path / "v.parquet"), "--output", str(tmp_path / "out"),
                           "--skip_existing", str(photo_index), *another_model]) == 2
    err = capsys.readouterr().err
    assert "--skip_existing: the index holds vectors of model " in err and len(err.strip().splitlines()) == 1
    assert search.main(["--index", str(photo_index), "--query", "a cat", "--output", str(tmp_path / "s"),
                        *another_model]) == 2
    err = capsys.readouterr().err
    assert "--index: the index holds vectors of model " in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists() and not (tmp_path / "s").exists()


# The server, as a user starts it: a process of its own, asked over HTTP on loopback.

class Server:
    def __init__(self, index: Path | str, extra: tuple[str, ...] = ()):
        self.port = free_port()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "pipelines.serve", "--index", str(index), "--port", str(self.port), *extra],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 120
        while True:
            assert self.process.poll() is None, self.process.stderr.read()
            try:
                if self.get("/health")[0] == 200:
                    return
            except OSError:
                assert time.monotonic() < deadline, "the server did not answer in 120 s"
                time.sleep(0.3)

    def ask(self, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        try:
            connection.request(method, path, body=body, headers={"Content-Type": "application/json"})
            response = connection.getresponse()
            return response.status, response.read()
        finally:
            connection.close()

    def get(self, path: str) -> tuple[int, bytes]:
        return self.ask("GET", path)

    def json(self, method: str, path: str, body: object = None) -> tuple[int, dict]:
        status, data = self.ask(method, path, None if body is None else json.dumps(body).encode())
        return status, json.loads(data)

    def stop(self) -> str:
        self.process.terminate()
        self.process.wait(timeout=30)
        return self.process.stderr.read()


@pytest.fixture(scope="module")
def server(photo_index):
    running = Server(photo_index)
    yield running
    running.stop()


@pytest.mark.slow
def test_text_search_over_http_gives_the_batch_search_jobs_images_in_order(server, finished_run, tmp_path):
    status, answer = server.json("GET", "/search?q=a%20dog&k=5")
    assert status == 200 and answer["took_ms"] > 0
    assert search.main(["--embeddings", str(finished_run), "--query", "a dog", "--images_per_query", "5",
                        "--output", str(tmp_path / "s")]) == 0
    batch = sorted(read_run(str(tmp_path / "s")), key=lambda row: row["rank"])
    assert [hit["uri"] for hit in answer["hits"]] == [row["uri"] for row in batch]
    assert [hit["score"] for hit in answer["hits"]] == pytest.approx([row["score"] for row in batch], abs=1e-4)
    assert set(answer["hits"][0]) == {"uri", "score", "labels", "top_prob", "width", "height"}


@pytest.mark.slow
def test_images_like_a_vector_or_an_indexed_image(server, photo_index):
    rows = {row["uri"]: row for row in read_run(str(photo_index), "rows")}
    rocket = next(uri for uri in rows if uri.endswith("rocket.jpg"))
    status, by_uri = server.json("POST", "/search", {"uri": rocket, "k": 3})
    assert status == 200 and by_uri["hits"][0]["uri"] == rocket
    status, by_vector = server.json("POST", "/search", {"vector": list(rows[rocket]["embedding"]), "k": 3})
    assert status == 200 and [hit["uri"] for hit in by_vector["hits"]] == [hit["uri"] for hit in by_uri["hits"]]
    status, thumb = server.get("/thumb?" + urllib.parse.urlencode({"uri": rocket}))
    assert status == 200 and max(Image.open(io.BytesIO(thumb)).size) <= 256
    status, labels = server.json("GET", "/labels")
    assert status == 200 and sum(count for _, count in labels["labels"]) == 7


@pytest.mark.slow
def test_hostile_requests_do_no_harm_and_the_server_keeps_answering(server, photo_index):
    refused = {
        "a uri not in the index": ("POST", "/search", json.dumps({"uri": "/etc/passwd", "k": 3}).encode(), 404),
        "a thumbnail of a path": ("GET", "/thumb?uri=" + urllib.parse.quote("../../../etc/passwd"), None, 404),
        "k = 10^9": ("GET", "/search?q=cat&k=1000000000", None, 400),
        "k not a number": ("GET", "/search?q=cat&k=ten", None, 400),
        "a 1 MB query in the body": ("POST", "/search", json.dumps({"uri": "x" * 1_000_000, "k": 1}).encode(), 404),
        "a query too long": ("GET", "/search?q=" + "a" * 5000, None, 400),
        "a vector of the wrong length": ("POST", "/search", json.dumps({"vector": [0.5] * 383}).encode(), 400),
        "numbers that are not numbers": ("POST", "/search", b'{"vector": ["x"], "k": 3}', 400),
        "bad JSON": ("POST", "/search", b'{"vector": [1, 2', 400),
        "neither vector nor uri": ("POST", "/search", b'{"k": 3}', 400),
        "an empty query": ("GET", "/search?q=%20", None, 400),
    }
    for why, (method, path, body, expected) in refused.items():
        status, data = server.ask(method, path, body)
        assert status == expected, (why, status, data[:200])
        assert list(json.loads(data)) == ["error"] and "\n" not in json.loads(data)["error"], why
    # Past the HTTP parser's limit (a 1 MB address), or refused from its length alone (a 4 MB body): the server
    # answers 4xx or closes that connection without reading on.
    for method, path, body in (("GET", "/search?q=" + "a" * 1_000_000, None), ("POST", "/search", b" " * (4 << 20))):
        try:
            status, data = server.ask(method, path, body)
            assert 400 <= status < 500
        except ConnectionError:
            pass
    with concurrent.futures.ThreadPoolExecutor(50) as pool:
        asks = [pool.submit(server.json, "GET", f"/search?q={urllib.parse.quote(query)}&k=3")
                for query in QUERIES * 13] + [pool.submit(server.json, "POST", "/search", {"vector": [0.1] * 384})
                                              for _ in range(10)]
        answers = [ask.result() for ask in asks]
    assert all(status == 200 and len(answer["hits"]) in (3, 7) for status, answer in answers)
    assert server.json("GET", "/health") == (200, {"images": 7, "model": finished_manifest(str(photo_index)).model,
                                                   "kind": "exact", "recall_at_10": 1.0})


@pytest.mark.slow
def test_a_thumbnail_is_decoded_as_the_jobs_decode_an_image(tmp_path):
    from pipelines.serve import thumbnail

    clear = tmp_path / "clear.png"
    Image.new("RGBA", (600, 300), (0, 0, 0, 0)).save(clear)
    thumb = Image.open(io.BytesIO(thumbnail(str(clear))))
    assert max(thumb.size) <= 256 and min(thumb.getpixel((10, 10))) >= 250  # transparency over white, not black
    bomb = tmp_path / "bomb.png"
    Image.new("1", (10_000, 10_000)).save(bomb)  # 100 megapixels in a few kilobytes
    with pytest.raises(Image.DecompressionBombError, match="exceeds the limit"):
        thumbnail(str(bomb))


def test_serve_refuses_what_it_cannot_serve_in_one_line(tmp_path, finished_run):
    for argv, message in ((["--index", str(tmp_path / "none")], "holds no finished run"),
                          (["--index", str(finished_run)], "is a classify run, not an index"),
                          (["--index", str(finished_run), "--port", "70000"], "--port must be from 1 to 65535")):
        done = subprocess.run([sys.executable, "-m", "pipelines.serve", *argv], capture_output=True, text=True,
                              timeout=120)
        assert done.returncode == 2 and message in done.stderr and len(done.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_a_port_another_server_holds_is_refused_before_the_index_is_loaded(server, photo_index):
    done = subprocess.run([sys.executable, "-m", "pipelines.serve", "--index", str(photo_index), "--port",
                           str(server.port)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.startswith(f"error: cannot listen on 127.0.0.1:{server.port}: Address already in use")
    assert len(done.stderr.strip().splitlines()) == 1
    assert server.json("GET", "/health")[0] == 200


@pytest.mark.slow
def test_another_address_than_loopback_is_served_with_a_warning(photo_index):
    running = Server(photo_index, ("--host", "0.0.0.0"))
    err = running.stop()
    assert "warning: listening on 0.0.0.0: the server has no authentication" in err


# The page, in headless Chromium, driven over the DevTools protocol as a person would: typing into the box.

class Browser:
    def __init__(self, url: str):
        from websockets.sync.client import connect

        port = free_port()
        self.process = subprocess.Popen(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             f"--remote-debugging-port={port}", "--window-size=1200,900", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while True:
            try:
                targets = json.loads(self._get(port, "/json/list"))
                if any(target["type"] == "page" for target in targets):
                    break
            except (OSError, ValueError):
                pass
            assert time.monotonic() < deadline, "chromium did not start"
            time.sleep(0.3)
        page = next(target for target in targets if target["type"] == "page")
        self.connections = contextlib.ExitStack()
        self.socket = self.connections.enter_context(connect(page["webSocketDebuggerUrl"], max_size=None))
        self.next_id = 0
        self.send("Page.enable")
        self.send("Page.navigate", url=url)

    @staticmethod
    def _get(port: int, path: str) -> bytes:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        connection.request("GET", path)
        return connection.getresponse().read()

    def send(self, method: str, **params) -> dict:
        self.next_id += 1
        self.socket.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.socket.recv(timeout=60))
            if message.get("id") == self.next_id:
                assert "error" not in message, message
                return message.get("result", {})

    def evaluate(self, expression: str):
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        return result["result"].get("value")

    def wait_for(self, expression: str, seconds: float = 30):
        deadline = time.monotonic() + seconds
        while not (value := self.evaluate(expression)):
            assert time.monotonic() < deadline, f"never true: {expression}"
            time.sleep(0.2)
        return value

    def thumbnails(self, count: int) -> list[str]:
        """The uris of the grid's thumbnails once `count` of them have loaded, in the grid's order."""
        return self.wait_for(f"(() => {{ const shown = {THUMBNAILS_SHOWN}; "
                             f"return shown.split('\\n').length === {count} && shown; }})()").split("\n")

    def close(self) -> None:
        self.connections.close()
        self.process.terminate()
        self.process.wait(timeout=30)


THUMBNAILS_SHOWN = """[...document.querySelectorAll('#grid figure')].map(figure => {
    const img = figure.querySelector('img');
    return img.complete && img.naturalWidth > 0 ? decodeURIComponent(img.src.split('uri=')[1]) : null;
}).filter(Boolean).join('\\n')"""


@pytest.mark.skipif(not CHROMIUM and not os.environ.get("REQUIRE_BROWSER"),
                    reason="no chromium on this machine (apt-get install chromium); .ci/run installs it")
@pytest.mark.slow
def test_the_page_shows_the_thumbnails_of_a_typed_query(server, tmp_path):
    assert CHROMIUM, "REQUIRE_BROWSER is set but chromium is not installed"
    browser = Browser(f"http://127.0.0.1:{server.port}/")
    try:
        browser.wait_for("document.readyState === 'complete' && document.querySelectorAll('#label option').length > 1")
        browser.evaluate("document.getElementById('q').focus()")
        browser.send("Input.insertText", text="a cat")
        status, answer = server.json("GET", "/search?q=a%20cat&k=48")
        shown = browser.thumbnails(len(answer["hits"]))
        assert shown == [hit["uri"] for hit in answer["hits"]] and shown[0].endswith("chelsea.jpg")
        assert browser.evaluate("location.search") == "?q=a+cat"  # the address shares the search
        captions = browser.evaluate("[...document.querySelectorAll('figcaption .score')].map(s => s.textContent)")
        assert captions[0] == f"{answer['hits'][0]['score']:.3f}"
        # "more like these": a click on the rocket searches by its vector.
        browser.evaluate("[...document.querySelectorAll('#grid figure')].find(f => "
                         "f.querySelector('img').alt.endsWith('rocket.jpg')).click()")
        deadline = time.monotonic() + 30
        while not (like := browser.thumbnails(7))[0].endswith("rocket.jpg"):  # until the new grid replaced the old
            assert time.monotonic() < deadline, like
            time.sleep(0.2)
        assert "like=" in browser.evaluate("location.search")
        shot = browser.send("Page.captureScreenshot", format="png")
        (tmp_path / "page.png").write_bytes(base64.b64decode(shot["data"]))
    finally:
        browser.close()
    # A shared link opens the page with its search run.
    browser = Browser(f"http://127.0.0.1:{server.port}/?q=a%20rocket")
    try:
        assert browser.thumbnails(7)[0].endswith("rocket.jpg")
        assert browser.evaluate("document.getElementById('q').value") == "a rocket"
    finally:
        browser.close()


def test_rows_carry_a_relabel_runs_labels_and_refuse_another_runs(finished_run, photo_index, tmp_path, capsys):
    from pipelines import relabel

    relabeled = tmp_path / "cifar10"
    assert relabel.main(["--embeddings", str(finished_run), "--labels", "cifar10", "--output", str(relabeled)]) == 0
    out = tmp_path / "index"
    assert index_job.main(["--embeddings", str(finished_run), "--labels_from", str(relabeled), "--output",
                           str(out)]) == 0
    labels = {row["uri"]: row["labels"] for row in read_run(str(relabeled))}
    assert {row["uri"]: row["labels"] for row in read_run(str(out), "rows")} == labels
    assert finished_manifest(str(out)).details["labels_run"] == finished_manifest(str(relabeled)).run_id
    assert index_job.main(["--embeddings", str(finished_run), "--labels_from", str(photo_index), "--output",
                           str(tmp_path / "refused")]) == 2
    assert "was made by `index`; give a classify or relabel run" in capsys.readouterr().err


def test_without_the_search_extra_the_index_names_the_command_that_adds_it(monkeypatch, tmp_path, capsys):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *rest: None if name == "faiss" else
                        find_spec(name, *rest))
    assert index_job.main(["--vectors", str(tmp_path / "v.parquet"), "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "faiss is missing: the index and its server need the `search` extra: pip install " in err
    assert "[search]" in err and len(err.strip().splitlines()) == 1
