"""What is in my bucket: topics found in a run's kept vectors, named, mapped and suggested as a label set."""
from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageEnhance, ImageOps

from labels.build_vocabulary import OUTPUT as WORDNET_FILE
from labels.build_vocabulary import vocabulary_lines
from pipelines import classify_images, report, topics
from pipelines.samples import sample_photo
from tests.test_portable import job_service  # noqa: F401 - the fixture, for the portable-runner test
from tests.test_report import CHROMIUM
from transforms.label_sets import load_label_phrases, parse_label_lines
from transforms.rank import LabelMatrix
from transforms.run_folder import read_manifest, read_run
from transforms.topics import map_points, principal_axes, starting_centroids, topic_names

PHOTOS = ("chelsea", "coffee", "rocket", "motorcycle")
HOSTILE = "<b onmouseover=alert(1)>&amp;"
REPO = Path(__file__).resolve().parents[1]


def _photo_of(uri: str) -> str:
    return Path(uri).name.rsplit("-", 1)[0].replace(HOSTILE, "")


@pytest.fixture(scope="module")
def variants(tmp_path_factory) -> Path:
    """Four photos in six variants each (crops, mirror images, brighter and darker), as 24 JPEGs: four groups that
    a user would call four topics. One file name is markup."""
    folder = tmp_path_factory.mktemp("variants")
    for name in PHOTOS:
        photo = sample_photo(name)
        for i in range(6):
            share = 0.7 + 0.05 * i
            left = int(photo.width * (1 - share) / 2 * (i % 3) / 2)
            variant = photo.crop((left, 0, left + int(photo.width * share), int(photo.height * share)))
            variant = ImageOps.mirror(variant) if i % 2 else variant
            variant = ImageEnhance.Brightness(variant).enhance(0.8 + 0.08 * i)
            prefix = HOSTILE if (name, i) == ("chelsea", 0) else ""
            variant.save(folder / f"{prefix}{name}-{i}.jpg", quality=90)
    return folder


@pytest.fixture(scope="module")
def found(tmp_path_factory, variants):
    """The variants classified with their vectors kept, then grouped into 4 topics with a report."""
    folder = tmp_path_factory.mktemp("topics")
    kept, out, page = folder / "kept", folder / "topics", folder / "topics.html"
    assert classify_images.main(["--input", f"{variants}/*.jpg", "--labels", "general", "--output", str(kept),
                                 "--keep_embeddings", "--report", str(folder / "labels.html")]) == 0
    assert topics.main(["--embeddings", str(kept), "--topics", "4", "--output", str(out), "--report", str(page)]) == 0
    return folder


def test_each_photos_variants_make_one_topic_and_every_image_is_in_exactly_one(found):
    rows = read_run(str(found / "topics"), "topics")
    images = read_run(str(found / "topics"), "images")
    assert sorted(row["uri"] for row in images) == sorted(row["uri"] for row in read_run(str(found / "kept")))
    assert len({row["uri"] for row in images}) == 24
    members = {row["topic"]: {_photo_of(image["uri"]) for image in images if image["topic"] == row["topic"]}
               for row in rows}
    assert sorted(members) == [1, 2, 3, 4] and all(len(photos) == 1 for photos in members.values()), members
    assert {photo for photos in members.values() for photo in photos} == set(PHOTOS)
    assert [row["size"] for row in rows] == [6, 6, 6, 6]
    names = [row["name"] for row in rows]
    assert len({name.casefold() for name in names}) == 4 and all(row["words"][0] == row["name"] for row in rows)
    for row in rows:  # the examples are the topic's images, nearest the centre first
        similarity = {image["uri"]: image["similarity"] for image in images if image["topic"] == row["topic"]}
        assert set(row["examples"]) == set(similarity)
        assert [similarity[uri] for uri in row["examples"]] == sorted(similarity.values(), reverse=True)
        assert row["mean_similarity"] == pytest.approx(np.mean(list(similarity.values())), abs=1e-5)
    coffee = next(row for row in rows if members[row["topic"]] == {"coffee"})
    assert "coffee" in " ".join(coffee["words"])  # the names come from what the model sees


def test_the_suggested_labels_are_a_label_set_classify_takes_as_it_is(found, variants):
    suggested = found / "topics" / topics.SUGGESTED_LABELS
    rows = read_run(str(found / "topics"), "topics")
    assert parse_label_lines(suggested.read_text()) == [row["name"] for row in rows]
    assert read_manifest(str(found / "topics")).run_id in suggested.read_text().splitlines()[0]
    out = found / "relabeled"
    assert classify_images.main(["--input", f"{variants}/*.jpg", "--labels", str(suggested), "--output", str(out),
                                 "--top_k", "1"]) == 0
    topic_name = {row["topic"]: row["name"] for row in rows}
    topic_of = {row["uri"]: topic_name[row["topic"]] for row in read_run(str(found / "topics"), "images")}
    agree = sum(row["labels"][0] == topic_of[row["uri"]] for row in read_run(str(out)))
    assert agree >= 20, agree  # labeling with a topic's name mostly gives its own images that name


def test_the_same_seed_finds_the_same_topics(found):
    again = found / "again"
    assert topics.main(["--embeddings", str(found / "kept"), "--topics", "4", "--output", str(again)]) == 0
    first, second = (sorted((row["uri"], row["topic"], round(row["x"], 5), round(row["y"], 5))
                            for row in read_run(str(out), "images")) for out in (found / "topics", again))
    assert first == second


def test_the_topics_page_maps_every_image_and_shows_each_topic(found):
    page = (found / "topics.html").read_text()
    images = read_run(str(found / "topics"), "images")
    assert page.count('<circle class="mark"') == len(images) == 24
    assert page.count('<section class="topic"') == 4
    assert "<b onmouseover" not in page and "&lt;b onmouseover=alert(1)&gt;&amp;amp;" in page
    assert "<script" not in page
    labels_page = (found / "labels.html").read_text()  # a classify run that kept its vectors gets the map too
    assert labels_page.count('<circle class="mark"') == 24 and "coloured by its top label" in labels_page
    assert report.main(["--run", str(found / "topics"), "--output", str(found / "again.html")]) == 0
    assert (found / "again.html").read_text().count('<section class="topic"') == 4


@pytest.mark.skipif(not CHROMIUM and not os.environ.get("REQUIRE_BROWSER"),
                    reason="no chromium on this machine (apt-get install chromium); .ci/run installs it")
@pytest.mark.slow
def test_the_map_renders_in_headless_chromium_with_one_mark_per_image(found):
    assert CHROMIUM, "REQUIRE_BROWSER is set but chromium is not installed"
    flags = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--enable-logging=stderr", "--v=0", "--window-size=1200,2400"]
    dom = subprocess.run([*flags, "--dump-dom", (found / "topics.html").as_uri()], capture_output=True, text=True,
                         timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert "CONSOLE" not in dom.stderr  # the page runs no script, an injected one included
    assert dom.stdout.count('<circle class="mark"') == 24
    titles = [part.split("</title>")[0] for part in dom.stdout.split('<circle class="mark"')[1:]]
    assert sum(title.count("&lt;b onmouseover=alert(1)&gt;") for title in titles) == 1  # a name stays text
    screenshot = found / "topics.png"
    shot = subprocess.run([*flags, f"--screenshot={screenshot}", (found / "topics.html").as_uri()],
                          capture_output=True, timeout=120)
    assert shot.returncode == 0
    pixels = np.asarray(Image.open(screenshot).convert("RGB")).reshape(-1, 3)
    drawn = Counter(map(tuple, pixels))
    for colour in ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728"):  # the four topics' marks are on screen
        rgb = tuple(int(colour[i:i + 2], 16) for i in (1, 3, 5))
        assert sum(n for c, n in drawn.items() if np.abs(np.subtract(c, rgb)).max() <= 40) > 20, colour


@pytest.mark.slow
def test_the_portable_runner_finds_the_same_topics(found, job_service, tmp_path):  # noqa: F811
    out = tmp_path / "topics"
    done = subprocess.run([sys.executable, "-m", "pipelines.topics", "--embeddings", str(found / "kept"),
                           "--topics", "4", "--output", str(out), "--runner", "PortableRunner", "--job_endpoint",
                           job_service, "--environment_type", "LOOPBACK"],
                          cwd=REPO, capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]
    direct = {row["uri"]: row["topic"] for row in read_run(str(found / "topics"), "images")}
    assert {row["uri"]: row["topic"] for row in read_run(str(out), "images")} == direct


@pytest.mark.parametrize("flags, message", [
    (["--topics", "0"], "--topics must be between 1 and the 24 images of the run, got 0"),
    (["--topics", "25"], "--topics must be between 1 and the 24 images of the run, got 25"),
    (["--topics", "3", "--vocabulary", "LABELS2"], "has 2 labels, fewer than the 3 --topics to name"),
    (["--topics", "3", "--vocabulary", "missing.txt"], "--vocabulary: cannot read label set 'missing.txt'"),
    (["--topics", "3", "--iterations", "0"], "--iterations must be at least 1, got 0"),
    (["--topics", "3", "--local_top_t", "10"], "were made by model 'conse-t20-"),
])
def test_a_job_that_cannot_work_stops_before_it_starts(found, tmp_path, capsys, flags, message):
    two = tmp_path / "two.txt"
    two.write_text("cat\ndog\n")
    flags = [str(two) if flag == "LABELS2" else flag for flag in flags]
    assert topics.main(["--embeddings", str(found / "kept"), "--output", str(tmp_path / "out"), *flags]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "out").exists()


def test_names_are_distinct_even_when_two_topics_are_nearest_the_same_word():
    words = LabelMatrix(["cat", "dog", "car"], np.eye(3, dtype=np.float32))
    centroids = np.array([[0.9, 0.1, 0.0], [0.8, 0.0, 0.2], [0.0, 0.2, 0.9]], dtype=np.float32)
    named = topic_names(centroids / np.linalg.norm(centroids, axis=1, keepdims=True), words)
    # Both first topics are nearest "cat"; the closer one gets it, the other its next word that is still free.
    assert [name for name, _ in named] == ["cat", "dog", "car"]
    assert named[1][1][:1] == ["cat"]  # its words still say what it is nearest


def test_the_start_finds_separate_groups_that_one_kmeans_plus_plus_start_can_miss():
    rng = np.random.default_rng(1)
    centres = np.eye(8, 16, dtype=np.float32)
    vectors = np.concatenate([centres[i] + 0.05 * rng.standard_normal((30, 16)) for i in range(8)])
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    sample = [(i.to_bytes(4, "big"), vector) for i, vector in enumerate(vectors.astype(np.float32))]
    centroids = starting_centroids(sample, 8, seed=0)
    assert sorted(np.argmax(centroids @ centres.T, axis=1)) == list(range(8))  # one centroid per group


def test_the_map_axes_from_sums_are_the_principal_axes():
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((200, 6)) * [5, 3, 1, 0.5, 0.2, 0.1]
    mean, axes = principal_axes(len(vectors), vectors.sum(axis=0), vectors.T @ vectors)
    _, _, rows = np.linalg.svd(vectors - vectors.mean(axis=0), full_matrices=False)
    assert np.abs(np.abs(axes.T @ rows[:2].T) - np.eye(2)).max() < 1e-6
    assert map_points(vectors.astype(np.float32)) == pytest.approx((vectors - mean) @ axes, abs=1e-4)


def test_the_default_vocabulary_is_current_and_a_label_set():
    assert parse_label_lines(WORDNET_FILE.read_text(encoding="utf-8")) == vocabulary_lines()
    vocabulary = load_label_phrases("wordnet")
    assert {"Golden Retriever", "dog", "mammal", "vehicle", "musical instrument"} <= set(vocabulary)
    assert "entity" not in vocabulary and "whole" not in vocabulary  # the top of WordNet names nothing
