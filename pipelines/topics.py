"""What is in my bucket? Groups the images of a run (kept with classify_images --keep_embeddings) into topics, names
each from a vocabulary, places every image on a 2-D map, and suggests a label set. No image is read and no image
model is loaded.

python -m pipelines.topics --embeddings out/labels --topics 12 --output out/topics [--vocabulary wordnet]
    [--report topics.html] [Beam options]

Writes two tables, `topics` (one row per topic, largest first) and `images` (each image's topic and place on the
map), and then OUT/suggested_labels.txt: one label per topic, which classify_images --labels reads as it is.
"""
from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

import apache_beam as beam

import pipelines
from pipelines import jobs
from pipelines.cli import ConfigError, exit_job
from transforms import files
from transforms.label_sets import LabelSetError, load_label_phrases, load_templates
from transforms.rank import EmbedLabels
from transforms.records import EMBEDDINGS, IMAGE_TOPICS_SCHEMA, TOPICS_SCHEMA
from transforms.run_folder import read_run
from transforms.topics import FindTopics

PROG = pipelines.prog("topics")
SUGGESTED_LABELS = "suggested_labels.txt"


def build_parser() -> argparse.ArgumentParser:
    parser = jobs.stored_vectors_parser(PROG, __doc__, "assigned", "an HTML page: the map and a sheet per topic")
    parser.add_argument("--topics", type=int, help="(required) how many topics to find (at most; a topic no image "
                                                   "ends up in is dropped)")
    parser.add_argument("--vocabulary", default="wordnet",
                        help="label set the topic names are chosen from: a built-in name or a file/URL, one label "
                             "per line (default wordnet: the WordNet nouns that have ImageNet photos below them)")
    parser.add_argument("--iterations", type=int, default=10, help="k-means passes over the vectors (default 10)")
    parser.add_argument("--seed", type=int, default=0, help="chooses the start; the same seed gives the same topics")
    return parser


def suggested_labels(rows: Sequence[dict], vocabulary: dict[str, list[str]], run_id: str) -> str:
    """A label file with one label per topic, largest first, as the vocabulary spells it (with its phrases)."""
    lines = [f"# Suggested by {PROG}, run {run_id}: one label per topic, largest topic first. Edit freely.",
             "# Each comment line below is the topic's size and its other nearest words."]
    for row in sorted(rows, key=lambda row: row["topic"]):
        phrases = vocabulary[row["name"]]
        lines.append(f"# topic {row['topic']}: {row['size']} images; also near: {', '.join(row['words'][1:])}")
        lines.append(row["name"] if phrases == [row["name"]] else f"{row['name']}: {' | '.join(phrases)}")
    return "\n".join(lines) + "\n"


def main(argv: Optional[Sequence[str]] = None) -> int:
    try:
        argv, args, beam_args = jobs.parse(build_parser(), argv, required=("embeddings", "topics", "output"))
        try:
            vocabulary = load_label_phrases(args.vocabulary)
        except LabelSetError as e:
            raise ConfigError(f"--vocabulary: {e}") from None
        if args.iterations < 1:
            raise ConfigError(f"--iterations must be at least 1, got {args.iterations}")
        job = jobs.StoredVectorsJob.from_args(args, beam_args)
        images = job.stored.rows(EMBEDDINGS)
        if not 1 <= args.topics <= images:
            raise ConfigError(f"--topics must be between 1 and the {images} images of the run, got {args.topics}")
        if args.topics > len(vocabulary):
            raise ConfigError(f"--vocabulary {args.vocabulary!r} has {len(vocabulary)} labels, fewer than the "
                              f"{args.topics} --topics to name")
        templates = load_templates(job.backend.default_templates)
        job.run.probe()
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    manifest = jobs.new_manifest("topics", PROG, argv, job.run, job.backend.model_id, embeddings_run=job.stored.run_id,
                                 details={"topics": args.topics, "iterations": args.iterations, "seed": args.seed,
                                          "vocabulary": args.vocabulary})

    def build(pipeline: beam.Pipeline) -> None:
        words = pipeline | "EmbedVocabulary" >> EmbedLabels(vocabulary, templates, job.backend)
        found = pipeline | "Topics" >> FindTopics(job.shards, args.topics, words, args.iterations, args.seed,
                                                  args.vectors_per_batch)
        job.write(manifest, {"topics": (found["topics"], TOPICS_SCHEMA),
                             "images": (found["images"], IMAGE_TOPICS_SCHEMA)})

    status = jobs.run_job(job.run.output, beam_args, manifest, build)
    if status != 0:
        return status
    # Written after the commit, from the committed rows; its first line names the run it comes from.
    suggested = f"{job.run.output.rstrip('/')}/{SUGGESTED_LABELS}"
    files.write(suggested, suggested_labels(read_run(job.run.output, "topics"), vocabulary,
                                                 manifest.run_id).encode("utf-8"))
    print(f"suggested labels: {suggested}")
    if args.report:
        from pipelines.report import write_topics_report

        write_topics_report(job.run.output, args.report)
        print(f"report: {args.report}")
    return 0


if __name__ == "__main__":
    exit_job(main())
