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
import dataclasses
from typing import Optional, Sequence

import apache_beam as beam

from pipelines import runner
from pipelines.cli import ConfigError, exit_job
from pipelines.options import RunTarget, StoredVectors, add_stored_options, checked_backend
from transforms import files
from transforms.label_sets import LabelSetError, load_label_phrases, load_templates
from transforms.manifest import Manifest
from transforms.rank import EmbedLabels
from transforms.records import EMBEDDINGS, IMAGE_TOPICS_SCHEMA, TOPICS_SCHEMA
from transforms.run_folder import read_run
from transforms.topics import FindTopics

SUGGESTED_LABELS = "suggested_labels.txt"


@dataclasses.dataclass(frozen=True, kw_only=True)
class TopicsPlan(runner.Plan):
    stored: StoredVectors
    topics: int
    vocabulary_source: str  # --vocabulary as given
    vocabulary: dict[str, list[str]]
    iterations: int
    seed: int
    vectors_per_batch: int
    report: Optional[str] = None


class Topics(runner.Job):
    name, module, required = "topics", "topics", ("embeddings", "topics", "output")

    def add_options(self, parser: argparse.ArgumentParser) -> None:
        add_stored_options(parser, "assigned", "an HTML page: the map and a sheet per topic")
        parser.add_argument("--topics", type=int, help="(required) how many topics to find (at most; a topic no "
                                                       "image ends up in is dropped)")
        parser.add_argument("--vocabulary", default="wordnet",
                            help="label set the topic names are chosen from: a built-in name or a file/URL, one "
                                 "label per line (default wordnet: the WordNet nouns that have ImageNet photos below "
                                 "them)")
        parser.add_argument("--iterations", type=int, default=10, help="k-means passes over the vectors (default 10)")
        parser.add_argument("--seed", type=int, default=0,
                            help="chooses the start; the same seed gives the same topics")

    def plan(self, args: argparse.Namespace, beam_args: Sequence[str]) -> TopicsPlan:
        try:
            vocabulary = load_label_phrases(args.vocabulary)
        except LabelSetError as e:
            raise ConfigError(f"--vocabulary: {e}") from None
        if args.iterations < 1:
            raise ConfigError(f"--iterations must be at least 1, got {args.iterations}")
        backend = checked_backend(args, beam_args)
        stored = StoredVectors.of(args.embeddings, backend)
        images = stored.manifest.rows(EMBEDDINGS)
        if not 1 <= args.topics <= images:
            raise ConfigError(f"--topics must be between 1 and the {images} images of the run, got {args.topics}")
        if args.topics > len(vocabulary):
            raise ConfigError(f"--vocabulary {args.vocabulary!r} has {len(vocabulary)} labels, fewer than the "
                              f"{args.topics} --topics to name")
        return TopicsPlan(target=RunTarget.from_args(args), backend=backend, stored=stored, topics=args.topics,
                          vocabulary_source=args.vocabulary, vocabulary=vocabulary, iterations=args.iterations,
                          seed=args.seed, vectors_per_batch=args.vectors_per_batch, report=args.report)

    def record(self, plan: TopicsPlan) -> dict:
        return {"embeddings_run": plan.stored.manifest.run_id,
                "details": {"topics": plan.topics, "iterations": plan.iterations, "seed": plan.seed,
                            "vocabulary": plan.vocabulary_source}}

    def tables(self, pipeline: beam.Pipeline, plan: TopicsPlan, run: runner.Run) -> runner.Outputs:
        words = pipeline | "EmbedVocabulary" >> EmbedLabels(plan.vocabulary, load_templates(
            plan.backend.default_templates), plan.backend)
        found = pipeline | "Topics" >> FindTopics(list(plan.stored.shards), plan.topics, words, plan.iterations,
                                                  plan.seed, plan.vectors_per_batch)
        return runner.Outputs({"topics": (found["topics"], TOPICS_SCHEMA),
                               "images": (found["images"], IMAGE_TOPICS_SCHEMA)})

    def after(self, plan: TopicsPlan, manifest: Manifest) -> None:
        """suggested_labels.txt, from the committed rows (its first line names the run they come from), and the
        report."""
        suggested = f"{plan.target.output.rstrip('/')}/{SUGGESTED_LABELS}"
        files.write(suggested, suggested_labels(read_run(plan.target.output, "topics"), plan.vocabulary,
                                                manifest.run_id).encode("utf-8"))
        print(f"suggested labels: {suggested}")
        runner.write_page(plan.report, lambda: topics_report(plan.target.output, plan.report))


def topics_report(output: str, page: str) -> None:
    from pipelines.report import write_topics_report  # only runs that ask for a report import its renderer

    write_topics_report(output, page)


def suggested_labels(rows: Sequence[dict], vocabulary: dict[str, list[str]], run_id: str) -> str:
    """A label file with one label per topic, largest first, as the vocabulary spells it (with its phrases)."""
    lines = [f"# Suggested by {Topics().prog}, run {run_id}: one label per topic, largest topic first. Edit freely.",
             "# Each comment line below is the topic's size and its other nearest words."]
    for row in sorted(rows, key=lambda row: row["topic"]):
        phrases = vocabulary[row["name"]]
        lines.append(f"# topic {row['topic']}: {row['size']} images; also near: {', '.join(row['words'][1:])}")
        lines.append(row["name"] if phrases == [row["name"]] else f"{row['name']}: {' | '.join(phrases)}")
    return "\n".join(lines) + "\n"


def main(argv: Optional[Sequence[str]] = None) -> int:
    return runner.main(Topics(), argv)


if __name__ == "__main__":
    exit_job(main())
