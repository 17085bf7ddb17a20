"""Teaching by example: confirmed images move their labels and fit the probabilities; review.csv filled in teaches."""
import csv
import json
import math
import re

import numpy as np
import pytest

from pipelines import classify_images, evaluate, relabel
from tests.conftest import colour_photo
from tests.tiny_models import tiny_clip
from transforms.examples import (
    CALIBRATION_PRIOR_SD,
    Examples,
    ExamplesError,
    fit_calibration,
    left_out_scores,
    read_examples,
    teach,
)
from transforms.rank import Decision, LabelMatrix, rank_rows
from transforms.records import Embedded, ImageInfo
from transforms.run_folder import read_manifest, read_run

E = np.eye(4, dtype=np.float32)  # e1..e4: a geometry whose cosines can be worked out by hand


def test_examples_move_their_label_toward_them_and_every_other_competitor_toward_what_they_share():
    labels = LabelMatrix(["cat", "car", "cup"], E[:3].copy(), background=E[3:].copy())
    examples = np.stack([np.array([0.6, 0, 0, 0.8], np.float32), np.array([0.6, 0.8, 0, 0], np.float32)])
    taught = teach(labels, Examples(("cat", "cat"), examples, weight=0.5), 10.0, None, prior_sd=None)
    mean = examples.mean(axis=0)
    np.testing.assert_allclose(taught.vectors[0], (E[0] + 0.5 * mean) / np.linalg.norm(E[0] + 0.5 * mean), rtol=1e-6)
    # A label without examples, and "none of these", move by the examples' mean too: two examples of one label
    # say what the user's images share, not that every image is a cat.
    np.testing.assert_allclose(taught.vectors[2], (E[2] + 0.5 * mean) / np.linalg.norm(E[2] + 0.5 * mean), rtol=1e-6)
    np.testing.assert_allclose(taught.background[0], (E[3] + 0.5 * mean) / np.linalg.norm(E[3] + 0.5 * mean),
                               rtol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(taught.vectors, axis=1), 1.0, rtol=1e-6)
    unmoved = teach(labels, Examples(("cat", "cat"), examples, weight=0.0), 10.0, None, prior_sd=None)
    np.testing.assert_array_equal(unmoved.vectors, labels.vectors)


def test_one_or_two_examples_of_one_label_lift_no_probability(caplog):
    rng = np.random.default_rng(0)
    labels = LabelMatrix(["a", "b", "c"], E[:3].copy(), background=E[3:].copy())
    images = np.abs(rng.normal(size=(400, 4))).astype(np.float32)
    images /= np.linalg.norm(images, axis=1, keepdims=True)

    def ranked(matrix):
        return [row["probs"] for row in rank_rows([(ImageInfo(f"{i}.jpg", "", 1, 1), Embedded(v))
                                                    for i, v in enumerate(images)], matrix, 10.0, "m",
                                                   Decision(top_k=3), none_margin=0.15)]

    before = ranked(labels)
    for count in (1, 2):
        with caplog.at_level("INFO", logger="zero_shot"):
            taught = teach(labels, Examples(("a",) * count, images[:count]), 10.0, 0.15)
        assert taught.calibration is None and "too few to fit the probabilities to" in caplog.text
        assert "top-1" not in caplog.text  # nothing fitted on the examples is reported as a score
        after = ranked(taught)
        assert max(sum(p) for p in after) <= 1.0 + 1e-6
        assert np.mean([p[0] for p in after]) < np.mean([p[0] for p in before]) + 0.05
        assert sum(p[0] >= 0.5 for p in after) <= 2 * max(1, sum(p[0] >= 0.5 for p in before))


def test_each_example_is_scored_by_its_label_taught_without_it():
    # Label A (text e1) has examples e3, e3, e3 and e4; label B (text e2) has e4, e4, e4 and e3; weight 1.
    text = E[:2]
    vectors = E[[2, 2, 2, 3, 3, 3, 3, 2]]
    truth = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    sums = np.stack([vectors[truth == label].sum(axis=0) for label in (0, 1)])
    own = left_out_scores(text, vectors, truth, sums, np.array([4.0, 4.0], np.float32), 1.0)
    # An e3 of A: A without it is e1 + (2 e3 + e4) / 3, whose cosine with e3 is (2/3) / sqrt(14/9) = 2 / sqrt(14).
    assert own[0] == pytest.approx(2 / math.sqrt(14), abs=1e-6)
    # The e4 of A: A without it is e1 + e3, at right angles to e4.
    assert own[3] == pytest.approx(0.0, abs=1e-6)
    # And symmetrically for B.
    assert own[4] == pytest.approx(2 / math.sqrt(14), abs=1e-6) and own[7] == pytest.approx(0.0, abs=1e-6)


def test_the_fitted_map_is_the_known_answer():
    # Four examples, two labels, no "none of these": every example scores label 0 one logit above label 1, and three
    # of the four are label 0's. The temperature that makes "label 0 at sigmoid(t)" mean what it says: sigmoid(t)
    # = 3/4, t = ln 3.
    scores = np.array([[1.0, 0.0]] * 4)
    fitted = fit_calibration(scores, None, 1.0, None, np.array([0, 0, 0, 1]), prior_sd=math.inf)
    assert fitted.temperature == pytest.approx(math.log(3), abs=2e-3) and fitted.bias == 0.0

    # Five examples always right by a small margin: the likelihood alone makes them certain; the prior keeps the
    # probability short of that.
    def top_probability(prior_sd):
        fitted = fit_calibration(np.array([[0.4, 0.0]] * 5), None, 1.0, None, np.zeros(5, dtype=int), prior_sd)
        return 1 / (1 + math.exp(-0.4 * fitted.temperature))

    assert top_probability(math.inf) > 0.9999 and 0.6 < top_probability(CALIBRATION_PRIOR_SD) < 0.99


def test_teaching_fits_the_probabilities_to_the_examples_and_keeps_the_ranking(caplog):
    rng = np.random.default_rng(1)
    labels = LabelMatrix(["a", "b"], E[:2].copy())
    # Twelve examples, six of each label, each near its label but not on it: the model's own probabilities (scale
    # 30) are too sure; the map fitted to them is a temperature below 1.
    examples = np.abs(np.stack([E[i % 2] + rng.normal(scale=0.9, size=4) for i in range(12)])).astype(np.float32)
    examples /= np.linalg.norm(examples, axis=1, keepdims=True)
    with caplog.at_level("INFO", logger="zero_shot"):
        taught = teach(labels, Examples(tuple("ab"[i % 2] for i in range(12)), examples, 0.0), 30.0, None)
    assert taught.calibration.temperature < 0.9 and "probabilities fitted to the 12 examples" in caplog.text
    images = [(ImageInfo(f"{i}.jpg", "", 1, 1), Embedded(v)) for i, v in enumerate(examples)]
    rows, untaught = (rank_rows(images, matrix, 30.0, "m", Decision(top_k=2)) for matrix in (taught, labels))
    assert [row["labels"] for row in rows] == [row["labels"] for row in untaught]
    assert all(row["probs"][0] < before["probs"][0] for row, before in zip(rows, untaught))
    assert all(sum(row["probs"]) == pytest.approx(1.0, abs=1e-5) for row in rows)


@pytest.mark.parametrize("content, message", [
    ("uri,label\na.jpg,unicorn\n", "label 'unicorn' (for a.jpg) is not in the label set"),
    ("uri,label\na.jpg,cat\na.jpg,dog\n", "gives a.jpg two labels: 'cat' and 'dog'"),
    ("uri,label\na.jpg,\nb.jpg,\n", "has no row with both a uri and a label"),
    ("", "needs a header with columns uri,label"),
    ("file,class\na.jpg,cat\n", "needs a header with columns uri,label"),
])
def test_bad_examples_files(tmp_path, content, message):
    (tmp_path / "examples.csv").write_text(content)
    with pytest.raises(ExamplesError, match=re.escape(message)):
        read_examples(str(tmp_path / "examples.csv"), ["cat", "dog"])


def test_a_review_file_with_some_rows_filled_in_is_an_examples_file(tmp_path):
    (tmp_path / "review.csv").write_text("\ufeffuri,label,top_prob,top_labels,sha256\n"  # a spreadsheet's BOM
                                         "a.jpg,cat,0.2,\"dog 0.20, cat 0.10\",x\nb.jpg,,0.3,dog 0.30,y\n"
                                         "a.jpg,cat,0.2,dog 0.20,x\n")
    assert read_examples(str(tmp_path / "review.csv"), ["cat", "dog"]) == [("a.jpg", "cat")]


def fill_in(review: list[dict], answers: dict[str, str], path) -> None:
    """What a person does in a spreadsheet: types the right label into some rows of review.csv."""
    for row in review:
        row["label"] = next((label for name, label in answers.items() if f"/{name}." in row["uri"]), "")
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(review[0]))
        writer.writeheader()
        writer.writerows(review)


ANSWERS = {"astronaut": "person", "coffee": "food and drink", "rocket": "space", "motorcycle": "vehicle"}


@pytest.fixture(scope="module")
def taught_runs(finished_run, tmp_path_factory):
    """review.csv of a finished run, filled in; then classify and relabel, both taught by it."""
    folder = tmp_path_factory.mktemp("taught")
    review = read_run(str(finished_run), "review")
    fill_in(review, ANSWERS, folder / "examples.csv")
    photos = review[0]["uri"].rsplit("/", 1)[0]
    common = ["--labels", "general", "--examples", str(folder / "examples.csv")]
    assert classify_images.main(["--input", f"{photos}/*.jpg", "--output", str(folder / "classify"), *common]) == 0
    assert relabel.main(["--embeddings", str(finished_run), "--output", str(folder / "relabel"), *common]) == 0
    return review, folder


def test_review_lists_the_least_sure_images_first_with_an_empty_label(finished_run, taught_runs):
    review, _ = taught_runs
    results = {row["uri"]: row for row in read_run(str(finished_run))}
    assert len(review) == len(results) == 7 and all(row["label"] == "" for row in read_run(str(finished_run),
                                                                                         "review"))
    probs = [row["top_prob"] for row in review]
    assert probs == sorted(probs) and probs[0] < 0.1
    first = results[review[0]["uri"]]
    assert review[0]["top_labels"].startswith(f"{first['labels'][0]} {first['probs'][0]:.2f}, ")


def test_relabel_with_examples_equals_classify_with_examples(finished_run, taught_runs):
    _, folder = taught_runs
    classified = {row["uri"]: row for row in read_run(str(folder / "classify"))}
    relabeled = {row["uri"]: row for row in read_run(str(folder / "relabel"))}
    untaught = {row["uri"]: row for row in read_run(str(finished_run))}
    assert classified.keys() == relabeled.keys() == untaught.keys()
    for uri, row in classified.items():
        assert row["labels"] == relabeled[uri]["labels"], uri
        np.testing.assert_allclose(row["scores"], relabeled[uri]["scores"], atol=1e-5)
        np.testing.assert_allclose(row["probs"], relabeled[uri]["probs"], atol=1e-5)
    # The examples taught: each confirmed image's label is now its top label, and surer than before.
    for name, label in ANSWERS.items():
        uri = next(uri for uri in classified if f"/{name}." in uri)
        assert classified[uri]["labels"][0] == label
        if untaught[uri]["labels"][0] == label:
            assert classified[uri]["probs"][0] > untaught[uri]["probs"][0]
    manifests = [read_manifest(str(folder / job)) for job in ("classify", "relabel")]
    digests = {manifest.settings["examples_sha256"] for manifest in manifests}
    assert len(digests) == 1 and None not in digests  # the same examples, whichever way their vectors came
    assert manifests[0].details["examples_images"] == 4


def test_skip_existing_refuses_a_run_made_with_other_examples(taught_runs, tmp_path, capsys):
    review, folder = taught_runs
    photos = review[0]["uri"].rsplit("/", 1)[0]
    status = classify_images.main(["--input", f"{photos}/*.jpg", "--labels", "general", "--output",
                                   str(tmp_path / "out"), "--skip_existing", str(folder / "classify")])
    err = capsys.readouterr().err.strip()
    assert status == 2 and "made with another examples_sha256" in err and "\n" not in err


@pytest.mark.parametrize("row, message", [
    ("{photos}/chelsea.jpg,unicorn", "label 'unicorn'"),
    ("{photos}/missing.jpg,animal", "cannot use {photos}/missing.jpg (FileNotFoundError"),
    ("{notes}/notes.jpg,animal", "cannot use {notes}/notes.jpg (UnidentifiedImageError: not an image format"),
])
def test_bad_examples_stop_the_job_before_it_starts(photos, tmp_path, capsys, row, message):
    (tmp_path / "notes.jpg").write_text("these are notes, not a photo")
    (tmp_path / "examples.csv").write_text("uri,label\n" + row.format(photos=photos, notes=tmp_path) + "\n")
    status = classify_images.main(["--input", f"{photos}/*.jpg", "--labels", "general", "--output",
                                   str(tmp_path / "out"), "--examples", str(tmp_path / "examples.csv")])
    err = capsys.readouterr().err.strip()
    assert status == 2 and err.startswith("error: --examples") and "\n" not in err
    assert message.format(photos=photos, notes=tmp_path) in err
    assert not (tmp_path / "out").exists()  # nothing written


def test_evaluate_leaves_the_examples_out_of_its_scores(taught_runs, tmp_path):
    review, folder = taught_runs
    photos = review[0]["uri"].rsplit("/", 1)[0]
    truth = {"astronaut": "person", "chelsea": "animal", "china": "building", "coffee": "food and drink",
             "flower": "plant", "motorcycle": "vehicle", "rocket": "space"}
    (tmp_path / "truth.csv").write_text("uri,label\n" + "".join(f"{n}.jpg,{label}\n" for n, label in truth.items()))
    assert evaluate.main(["--input", f"{photos}/*.jpg", "--truth", str(tmp_path / "truth.csv"), "--labels",
                          "general", "--output", str(tmp_path / "eval"), "--examples",
                          str(folder / "examples.csv")]) == 0
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["n"] == 3 and metrics["examples_left_out"] == 4


def test_the_report_offers_the_review_file(finished_run, tmp_path):
    from pipelines.report import write_report

    write_report(str(finished_run), str(tmp_path / "page.html"))
    page = (tmp_path / "page.html").read_text()
    assert "/review.csv</code>" in page and "<code>--examples</code>" in page


def test_examples_teach_the_nomic_backend(nomic_api, tmp_path):
    # The loopback API embeds an image along its mean colour and the words "warm" and "cool" in directions that mean
    # nothing (zero-shot, they happen to put red and yellow under "warm", blue and cyan under "cool"). Examples that
    # call red "cool" and blue "warm" teach it otherwise: yellow goes with red, cyan with blue.
    for name, rgb in {"red": (230, 20, 20), "yellow": (230, 220, 20), "blue": (20, 30, 220),
                      "cyan": (20, 220, 220)}.items():
        (tmp_path / f"{name}.jpg").write_bytes(colour_photo(rgb))
    (tmp_path / "labels.txt").write_text("warm\ncool\n")
    (tmp_path / "examples.csv").write_text(f"uri,label\n{tmp_path}/red.jpg,cool\n{tmp_path}/blue.jpg,warm\n")
    assert classify_images.main(["--backend", "nomic", "--input", f"{tmp_path}/*.jpg", "--labels",
                                 str(tmp_path / "labels.txt"), "--examples", str(tmp_path / "examples.csv"),
                                 "--output", str(tmp_path / "out")]) == 0
    top = {row["uri"].rsplit("/", 1)[-1]: row["labels"][0] for row in read_run(str(tmp_path / "out"))}
    assert top == {"red.jpg": "cool", "yellow.jpg": "cool", "blue.jpg": "warm", "cyan.jpg": "warm"}


def test_examples_teach_the_hf_backend_alike_in_classify_and_relabel(photos, tmp_path):
    model = tiny_clip(tmp_path / "clip")
    (tmp_path / "labels.txt").write_text("a cat\na cup of coffee\na rocket\n")
    (tmp_path / "examples.csv").write_text(f"uri,label\n{photos}/chelsea.jpg,a cat\n{photos}/rocket.jpg,a rocket\n"
                                           f"{photos}/coffee.jpg,a cup of coffee\n{photos}/astronaut.jpg,a rocket\n")
    common = ["--backend", "hf", "--hf_model", str(model), "--labels", str(tmp_path / "labels.txt"), "--templates",
              "plain", "--top_k", "3"]
    assert classify_images.main([*common, "--input", f"{photos}/*.jpg", "--output", str(tmp_path / "plain"),
                                 "--keep_embeddings"]) == 0
    taught = ["--examples", str(tmp_path / "examples.csv")]
    assert classify_images.main([*common, *taught, "--input", f"{photos}/*.jpg", "--output",
                                 str(tmp_path / "classify")]) == 0
    assert relabel.main([*common, *taught, "--embeddings", str(tmp_path / "plain"), "--output",
                         str(tmp_path / "relabel")]) == 0
    classified = {row["uri"]: row for row in read_run(str(tmp_path / "classify"))}
    relabeled = {row["uri"]: row for row in read_run(str(tmp_path / "relabel"))}
    plain = {row["uri"]: row for row in read_run(str(tmp_path / "plain"))}
    assert classified.keys() == relabeled.keys() and len(classified) == 7
    for uri, row in classified.items():
        assert row["labels"] == relabeled[uri]["labels"] and row["probs"] == pytest.approx(relabeled[uri]["probs"],
                                                                                            abs=1e-5)
    assert any(classified[uri]["scores"] != pytest.approx(plain[uri]["scores"], abs=1e-3) for uri in plain)


def test_labels_a_spreadsheet_would_run_are_written_as_text_and_read_back(photos, tmp_path):
    labels = tmp_path / "labels.txt"
    labels.write_text("=cat\n+coffee\n-rocket\n@astronaut\n")
    truth = tmp_path / "truth.csv"
    truth.write_text("uri,label\nchelsea.jpg,=cat\ncoffee.jpg,+coffee\n")
    out = tmp_path / "evaluated"
    assert evaluate.main(["--input", f"{photos}/c[ho]*.jpg", "--truth", str(truth), "--labels", str(labels),
                          "--output", str(out)]) == 0
    with (out / "per_class.csv").open(newline="") as f:
        assert [row["label"] for row in csv.DictReader(f)] == ["'=cat", "'+coffee"]  # the labels in the truth
    rows = read_run(str(out / "predictions"), "review")
    assert rows and all(row["top_labels"].startswith("'") for row in rows)
    copied = rows[0]["top_labels"].split(" ")[0]  # the reviewer copies the best label's cell as it is
    fill_in(rows, {rows[0]["uri"].rsplit("/", 1)[-1].split(".")[0]: copied}, tmp_path / "filled.csv")
    (example,) = read_examples(str(tmp_path / "filled.csv"), ["=cat", "+coffee", "-rocket", "@astronaut"])
    assert example == (rows[0]["uri"], copied[1:])
