"""`make demo`: labels the sample photos that scikit-image and scikit-learn ship with the built-in `general` label
set, and prints each one's top labels, why (the ImageNet classes behind it), and whether it is right."""
from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq

from pipelines import classify_images
from pipelines.cli import exit_job
from pipelines.samples import write_sample_photos
from transforms.run_folder import run_files

OUTPUT = Path("demo-output")
MIN_PROB_EXAMPLE = 0.3
LABELS = "general"
# Every demo photo has a right answer in `general`; two have two (an astronaut is a person in space; a rocket
# is a vehicle for space).
RIGHT_ANSWERS = {
    "astronaut": {"person", "space"}, "chelsea": {"animal"}, "china": {"building"}, "coffee": {"food and drink"},
    "flower": {"plant"}, "motorcycle": {"vehicle"}, "rocket": {"space", "vehicle"},
}


def main() -> int:
    photos, run, page = OUTPUT / "photos", OUTPUT / "labels", OUTPUT / "report.html"
    write_sample_photos(photos)
    status = classify_images.main(["--input", f"{photos}/*.jpg", "--labels", LABELS, "--output", str(run),
                                   "--overwrite", "--top_k", "3", "--explain", "3", "--report", str(page)])
    if status == 0:
        show(run, page)
    return status


def show(run: Path, page: Path) -> None:
    """Each photo's top labels, why, and whether they are right; then where the rows and the page are."""
    files = run_files(str(run))
    table = pq.read_table(files).sort_by("uri")
    print(f"\nTop labels from the `{LABELS}` set ({table.column('model')[0]}).")
    print("The number is the label's probability: a softmax over the labels and 'none of these', so the labels "
          "of an image add up to at most 1.\n")
    right, unsure = 0, []
    for row in table.to_pylist():
        name = Path(row["uri"]).stem
        best = ", ".join(f"{label} {prob:.2f}" for label, prob in zip(row["labels"], row["probs"]))
        ok = row["labels"][0] in RIGHT_ANSWERS.get(name, ())
        right += ok
        if row["probs"][0] < MIN_PROB_EXAMPLE:
            unsure.append(f"{name} ({row['labels'][0]} {row['probs'][0]:.2f})")
        why = ", ".join(f"{e['class']} {e['prob']:.2f}" + (f" ({e['label']})" if e["label"] else "")
                        for e in row["evidence"])
        print(f"  {'right' if ok else 'WRONG'}  {name + '.jpg':16} {best:52}  seen as: {why}")
    print("\n".join([
        f"\n{right} of {table.num_rows} photos right. Results: {', '.join(files)} "
        "(read them as README.md shows; `--explain` filled the `evidence` column).",
        f"Open {page} in a browser to see the photos under their labels.",
        f"With --min_prob {MIN_PROB_EXAMPLE}, these would be labeled `unknown` instead: {', '.join(unsure) or 'none'}.",
    ]))


if __name__ == "__main__":
    exit_job(main())
