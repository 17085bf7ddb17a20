"""Topics of stored image vectors: spherical k-means run as passes over the embeddings shards (each pass one combine,
so no worker ever holds the vectors), topic names from a vocabulary, and a 2-D map on the vectors' principal axes."""
from __future__ import annotations

import dataclasses
import hashlib
import heapq
from typing import Any, Iterator, Optional, Sequence

import apache_beam as beam
import numpy as np

from transforms.backends import l2_normalize
from transforms.rank import LabelMatrix
from transforms.records import ImageTopic, TopicRow, as_dict
from transforms.stored import best_first
from transforms.write import read_vector_batches

SAMPLE_PER_TOPIC = 50  # vectors per topic in the sample the start is chosen on
MIN_SAMPLE = 2_000
RESTARTS = 10  # k-means runs on the sample; the best one starts the passes over all vectors
WORDS = 5  # vocabulary words per topic
EXAMPLES = 12  # images nearest each topic's centre, in its row and the report's contact sheet


def nearest(vectors: np.ndarray, centroids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(index of each vector's nearest centroid by cosine, that cosine); ties go to the lower index."""
    scores = vectors @ centroids.T
    best = scores.argmax(axis=1)
    return best, scores[np.arange(len(vectors)), best]


@dataclasses.dataclass
class PassStats:
    """What one pass over the vectors adds up, per centroid and overall; partial stats of shards add up."""

    sums: np.ndarray  # (k, d) the vectors nearest each centroid, summed
    counts: np.ndarray  # (k,) how many
    cosines: np.ndarray  # (k,) their cosines to it, summed
    total: np.ndarray  # (d,) every vector, summed: with `outer`, the map's principal axes (last pass only)
    outer: np.ndarray  # (d, d) sum of x xᵀ (last pass only)

    @classmethod
    def of(cls, vectors: np.ndarray, centroids: np.ndarray, spread: bool = False) -> "PassStats":
        """The batch's stats; with `spread`, also the sums the map's axes need, whose x xᵀ costs (d / k) times the
        assignment itself: only the last pass asks for them."""
        k, d = centroids.shape
        best, cosines = nearest(vectors, centroids)
        wide = vectors.astype(np.float64)  # sums over millions of vectors: float32 would lose the small ones
        # Each centroid's vectors summed as one matrix product with the one-hot assignment (np.add.at, the obvious
        # way, took half of a job's time).
        sums = (best[None, :] == np.arange(k)[:, None]).astype(np.float64) @ wide
        total, outer = (wide.sum(axis=0), wide.T @ wide) if spread else (np.zeros(d), np.zeros((d, d)))
        return cls(sums, np.bincount(best, minlength=k), np.bincount(best, cosines, minlength=k), total, outer)

    def __add__(self, other: "PassStats") -> "PassStats":
        return PassStats(*(a + b for a, b in zip(dataclasses.astuple(self), dataclasses.astuple(other))))


def shard_stats(shard: str, centroids: np.ndarray, batch_size: int, spread: bool) -> Iterator[PassStats]:
    for _, vectors in read_vector_batches(shard, batch_size):
        yield PassStats.of(vectors, centroids, spread)


class SumStats(beam.CombineFn):
    """PassStats of every batch -> their sum (None for no vectors)."""

    def create_accumulator(self) -> Optional[PassStats]:
        return None

    def add_input(self, total: Optional[PassStats], stats: Optional[PassStats]) -> Optional[PassStats]:
        return stats if total is None else total if stats is None else total + stats

    def merge_accumulators(self, totals):
        merged = None
        for total in totals:
            merged = self.add_input(merged, total)
        return merged

    def extract_output(self, total: Optional[PassStats]) -> Optional[PassStats]:
        return total


def sample_key(seed: int, uri: str) -> bytes:
    """A pseudo-random but fixed order of the images: the sample the start is chosen on is the same every run."""
    return hashlib.blake2b(f"{seed}\0{uri}".encode("utf-8", "surrogateescape"), digest_size=8).digest()


def shard_sample(shard: str, seed: int, size: int, batch_size: int) -> list[tuple[bytes, np.ndarray]]:
    """The `size` vectors of the shard with the smallest `sample_key`s, as (key, vector): only these leave the
    shard, so the sample's combine never sees every vector (Beam's Top alone would hold them all here)."""
    # A copy of each row: a row view would keep its whole batch alive, and with it every batch of the shard.
    keyed = ((sample_key(seed, uri), vector.copy())
             for uris, vectors in read_vector_batches(shard, batch_size) for uri, vector in zip(uris, vectors))
    return heapq.nsmallest(size, keyed, key=lambda item: item[0])


def kmeans_plus_plus(vectors: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k starting centroids, each drawn with probability proportional to its cosine distance from those already
    drawn (Arthur and Vassilvitskii, 2007); duplicates only when the vectors have fewer than k distinct ones."""
    chosen = [int(rng.integers(len(vectors)))]
    distance = 1 - vectors @ vectors[chosen[0]]
    for _ in range(1, k):
        weights = np.clip(distance, 0, None)
        index = int(rng.choice(len(vectors), p=weights / weights.sum())) if weights.sum() > 0 else chosen[-1]
        chosen.append(index)
        distance = np.minimum(distance, 1 - vectors @ vectors[index])
    return vectors[chosen]


def lloyd_step(stats: PassStats, centroids: np.ndarray) -> np.ndarray:
    """Each centroid moved to the normalized mean of the vectors nearest it; a centroid nothing is near stays."""
    moved = l2_normalize(stats.sums)
    return np.where((stats.counts > 0)[:, None], moved, centroids).astype(np.float32)


def starting_centroids(sample: Sequence[tuple[bytes, np.ndarray]], k: int, seed: int, restarts: int = RESTARTS,
                       steps: int = 50) -> np.ndarray:
    """The best of `restarts` k-means runs on the sample (k-means++, then Lloyd steps until no vector changes
    centroid): one k-means++ start often settles in a poor local optimum, e.g. two apart groups sharing a centroid
    while another group is split in two. Best: the highest sum of cosines to the nearest centroid."""
    vectors = np.stack([vector for _, vector in sorted(sample, key=lambda item: item[0])])
    rng = np.random.default_rng(seed)
    best_centroids, best_fit = None, -np.inf
    for _ in range(restarts):
        centroids, assigned = kmeans_plus_plus(vectors, k, rng), None
        for _ in range(steps):
            best, _ = nearest(vectors, centroids)
            if assigned is not None and np.array_equal(best, assigned):
                break
            assigned, centroids = best, lloyd_step(PassStats.of(vectors, centroids), centroids)
        if (fit := nearest(vectors, centroids)[1].sum()) > best_fit:
            best_centroids, best_fit = centroids, fit
    return best_centroids


def principal_axes(count: int, total: np.ndarray, outer: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mean, (d, 2) the two directions of most variance), from the sums of x and of x xᵀ: the map's axes.
    Each axis points where its largest component is positive, so a run draws the same map every time."""
    mean = total / max(count, 1)
    covariance = outer / max(count, 1) - np.outer(mean, mean)
    _, vectors = np.linalg.eigh(covariance)  # ascending eigenvalues
    axes = vectors[:, ::-1][:, :2]
    axes *= np.sign(axes[np.abs(axes).argmax(axis=0), [0, 1]])
    return mean, axes


def map_points(vectors: np.ndarray) -> np.ndarray:
    """(n, 2) places of vectors held in memory on their own map (a classify run's report); the topics job computes
    the same axes from sums, in passes."""
    wide = vectors.astype(np.float64)
    mean, axes = principal_axes(len(wide), wide.sum(axis=0), wide.T @ wide)
    return (wide - mean) @ axes


@dataclasses.dataclass(frozen=True)
class Topics:
    """The final topics, largest first (topic i + 1 is row i), and the map's axes."""

    centroids: np.ndarray
    sizes: np.ndarray
    mean_similarity: np.ndarray
    map_mean: np.ndarray
    map_axes: np.ndarray

    @classmethod
    def of(cls, stats: PassStats, centroids: np.ndarray) -> "Topics":
        """Topics from the last pass's stats (taken at `centroids`); a centroid no image is nearest is dropped."""
        order = [i for i in np.argsort(-stats.counts, kind="stable") if stats.counts[i] > 0]
        mean, axes = principal_axes(int(stats.counts.sum()), stats.total, stats.outer)
        return cls(centroids[order], stats.counts[order], stats.cosines[order] / stats.counts[order], mean, axes)


def image_rows(shard: str, topics: Topics, batch_size: int) -> Iterator[dict[str, Any]]:
    """One ImageTopic row per stored vector of the shard: its topic, and its place on the map."""
    for uris, vectors in read_vector_batches(shard, batch_size):
        best, cosines = nearest(vectors, topics.centroids)
        points = (vectors - topics.map_mean) @ topics.map_axes
        for uri, topic, cosine, (x, y) in zip(uris, best, cosines, points):
            yield as_dict(ImageTopic(uri, int(topic) + 1, float(cosine), float(x), float(y)))


def topic_names(centroids: np.ndarray, vocabulary: LabelMatrix) -> list[tuple[str, list[str]]]:
    """(name, nearest words) per centroid. Names are distinct: the closest (topic, word) pair is named first, then
    the closest pair among the topics and words left, and so on; the words are each topic's own nearest ones."""
    scores = centroids @ vocabulary.vectors.T
    names: dict[int, int] = {}
    taken: set[int] = set()
    for flat in np.argsort(-scores, axis=None, kind="stable"):
        topic, word = divmod(int(flat), scores.shape[1])
        if topic not in names and word not in taken:
            names[topic] = word
            taken.add(word)
            if len(names) == len(centroids):
                break
    result = []
    for topic, row in enumerate(scores):
        nearest_words = [int(w) for w in np.argsort(-row, kind="stable")[:WORDS] if w != names[topic]]
        result.append((vocabulary.names[names[topic]], [vocabulary.names[w] for w in nearest_words[:WORDS - 1]]))
    return result


def topic_rows(_, topics: Topics, vocabulary: LabelMatrix, examples: dict[int, list[tuple[float, str]]]
               ) -> Iterator[dict[str, Any]]:
    for i, (name, words) in enumerate(topic_names(topics.centroids, vocabulary)):
        nearest_uris = [uri for _, uri in examples.get(i + 1, [])]  # Top's order: nearest first
        yield as_dict(TopicRow(i + 1, int(topics.sizes[i]), name, [name, *words], nearest_uris,
                               float(topics.mean_similarity[i])))


class FindTopics(beam.PTransform):
    """Embeddings shards -> {"topics": TopicRow dicts, "images": ImageTopic dicts}.

    Spherical k-means: the start is k-means++ on a fixed sample of the vectors (the ones with the smallest
    `sample_key`, so runs repeat); then `iterations` Lloyd steps, each one pass over the shards summing each
    centroid's nearest vectors (a combine); a last pass gives the sizes and the map's axes, and the rows. Every pass
    reads the shards again rather than keep the vectors: memory stays flat in their number."""

    def __init__(self, shards: Sequence[str], k: int, vocabulary: beam.PCollection, iterations: int = 10,
                 seed: int = 0, batch_size: int = 1024):
        super().__init__()
        self.shards, self.k, self.vocabulary = list(shards), k, vocabulary
        self.iterations, self.seed, self.batch_size = iterations, seed, batch_size

    def _pass(self, shards, name: str, centroids, spread: bool = False) -> beam.PCollection:
        return (shards
                | f"{name}Stats" >> beam.FlatMap(shard_stats, beam.pvalue.AsSingleton(centroids), self.batch_size,
                                                 spread)
                | f"{name}Sum" >> beam.CombineGlobally(SumStats()).without_defaults())

    def expand(self, pbegin):
        shards = pbegin | "Shards" >> beam.Create(self.shards) | "Spread" >> beam.Reshuffle()
        sample_size = max(MIN_SAMPLE, SAMPLE_PER_TOPIC * self.k)
        centroids = (shards
                     | "Keyed" >> beam.FlatMap(shard_sample, self.seed, sample_size, self.batch_size)
                     | "Sample" >> beam.combiners.Top.Of(sample_size, key=lambda item: item[0], reverse=True)
                     | "Start" >> beam.Map(starting_centroids, self.k, self.seed))
        for step in range(1, self.iterations + 1):
            stats = self._pass(shards, f"Step{step}", centroids)
            centroids = stats | f"Step{step}Move" >> beam.Map(lloyd_step, beam.pvalue.AsSingleton(centroids))
        topics = (self._pass(shards, "Final", centroids, spread=True)
                  | "Topics" >> beam.Map(Topics.of, beam.pvalue.AsSingleton(centroids)))
        images = shards | "Rows" >> beam.FlatMap(image_rows, beam.pvalue.AsSingleton(topics), self.batch_size)
        examples = (images
                    | "Nearest" >> beam.Map(lambda row: (row["topic"], (row["similarity"], row["uri"])))
                    | "Examples" >> beam.combiners.Top.PerKey(EXAMPLES, key=best_first))
        rows = (pbegin
                | "Once" >> beam.Create([None])
                | "Name" >> beam.FlatMap(topic_rows, beam.pvalue.AsSingleton(topics),
                                         beam.pvalue.AsSingleton(self.vocabulary), beam.pvalue.AsDict(examples)))
        return {"topics": rows, "images": images}
