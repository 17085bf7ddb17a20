"""Renders a finished run as one self-contained HTML page: a summary, a bar chart of labels, a contact sheet per
label (best first), the images the model was least sure of, and the errors table.

python -m pipelines.report --run out/labels --output report.html

Thumbnails (at most THUMB_SIDE px) are read through fsspec from the result URIs, in parallel, and embedded; an
image that cannot be read shows a placeholder. Every string from the data is escaped: a label or file name is
text, never markup. The page runs no script.
"""
from __future__ import annotations

import base64
import datetime
import html
import io
import json
import posixpath
import sys
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import PurePosixPath
from typing import Optional, Sequence

import fsspec
from apache_beam.options.pipeline_options import PipelineOptions
from PIL import Image

import pipelines
from pipelines.cli import ConfigError, OneLineParser, exit_job, unknown_beam_args
from transforms.decode import decode_image
from transforms.faults import StoreError, with_retries
from transforms.read import read_bytes
from transforms.records import EMBEDDINGS, REVIEW
from transforms.reliability import calibration_error
from transforms.review import top_prob
from transforms.run_folder import RunFolderError, finished_manifest, read_run, run_files
from transforms.stores import use_job_options

THUMB_SIDE = 256
PER_LABEL = 24  # thumbnails per label section; the rest are counted
LEAST_SURE = 24
READERS = 8
# Colours of the map's groups (topics, or labels): matplotlib's tab20, which stays readable at 20 groups.
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
           "#17becf", "#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5", "#c49c94", "#f7b6d2", "#c7c7c7",
           "#dbdb8d", "#9edae5")
MAP_WIDTH, MAP_HEIGHT, MAP_MARGIN = 720, 480, 10

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem; color: #222; }
h1 { margin-bottom: 0.2rem; } h2 { margin-top: 2rem; border-bottom: 1px solid #ddd; }
.summary td { padding: 0.1rem 1rem 0.1rem 0; }
.sheet { display: flex; flex-wrap: wrap; gap: 0.6rem; }
figure { margin: 0; width: 180px; font-size: 0.75rem; }
figure img, figure .missing { width: 180px; height: 135px; object-fit: cover; background: #eee; display: block; }
figure .missing { display: flex; align-items: center; justify-content: center; color: #888; }
figcaption { overflow-wrap: anywhere; } .more { color: #666; font-style: italic; }
table.errors { border-collapse: collapse; font-size: 0.8rem; }
svg.map { border: 1px solid #ddd; background: #fcfcfc; } svg.map circle { fill-opacity: 0.8; }
svg.reliability { background: #fcfcfc; }
ul.legend { list-style: none; padding: 0; columns: 3; font-size: 0.8rem; max-width: 720px; }
ul.legend span { display: inline-block; width: 0.8rem; height: 0.8rem; margin-right: 0.3rem; vertical-align: middle; }
table.errors td, table.errors th { border: 1px solid #ddd; padding: 0.2rem 0.4rem; text-align: left; }
"""


def thumbnail(uri: str, side: int = THUMB_SIDE) -> Optional[str]:
    """A data: URI of a JPEG at most `side` px, or None if the image cannot be read or decoded; a store that fails
    is retried as the jobs retry it, then stops the report (StoreError), rather than make every image a placeholder."""
    try:
        image = decode_image(with_retries(uri, lambda: read_bytes(uri)), Image.MAX_IMAGE_PIXELS, side)[0]
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=80)
    except StoreError:
        raise
    except Exception:  # noqa: BLE001 - a thumbnail that fails is a placeholder, never a failed report
        return None
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()


def thumbnails(uris: set[str]) -> dict[str, Optional[str]]:
    """uri -> its thumbnail (or None), READERS fetched at a time."""
    with ThreadPoolExecutor(READERS) as pool:
        return dict(zip(uris, pool.map(thumbnail, uris)))


def _by_label(results: Sequence[dict]) -> dict[str, list[dict]]:
    """Top label -> its rows, most probable first."""
    by_label: dict[str, list[dict]] = {}
    for row in results:
        by_label.setdefault(str(row["labels"][0]), []).append(row)
    return {label: sorted(rows, key=top_prob, reverse=True) for label, rows in by_label.items()}


def _least_sure(results: Sequence[dict], count: int) -> list[dict]:
    """The `count` rows with the lowest top-1 probability, lowest first."""
    return sorted(results, key=top_prob)[:count]


def _figure(row: dict, thumbs: dict[str, Optional[str]]) -> str:
    name = PurePosixPath(row["uri"]).name
    picture = (f'<img src="{thumbs[row["uri"]]}" alt="{html.escape(name)}">' if thumbs.get(row["uri"])
               else '<div class="missing">no preview</div>')
    labels = ", ".join(f"{html.escape(str(label))} {float(prob):.2f}"
                       for label, prob in zip(row["labels"], row["probs"]))
    return (f'<figure data-uri="{html.escape(row["uri"])}" title="{html.escape(row["uri"])}">{picture}'
            f"<figcaption><b>{html.escape(name)}</b><br>{labels or html.escape(str(row['labels'][0]))}"
            "</figcaption></figure>")


def _bar_chart(counts: Counter) -> str:
    """Label counts as an inline SVG, most frequent first."""
    items = counts.most_common()
    top = max(counts.values(), default=1)
    rows = [f'<g transform="translate(0,{i * 22})"><text x="195" y="15" text-anchor="end">{html.escape(label)}'
            f'</text><rect x="200" y="3" height="16" width="{400 * n / top:.1f}" fill="#4a7fb5"></rect>'
            f'<text x="{205 + 400 * n / top:.1f}" y="15">{n}</text></g>' for i, (label, n) in enumerate(items)]
    return (f'<svg class="chart" width="660" height="{22 * len(items) + 4}" font-size="12" role="img" '
            f'aria-label="label counts">{"".join(rows)}</svg>')


def reliability_svg(bins: Sequence[dict], side: int = 320, margin: int = 40) -> str:
    """The reliability diagram (transforms.reliability) as an inline SVG: per bin of top-1 probability a bar
    as high as the share of its images that are right, a dot at their mean probability, the diagonal where the two
    are equal, and how many images each bin holds."""
    def x(value: float) -> float:
        return margin + value * side

    def y(value: float) -> float:
        return margin + (1 - value) * side

    marks = [f'<rect x="{x(0)}" y="{y(1)}" width="{side}" height="{side}" fill="none" stroke="#bbb"></rect>',
             f'<line x1="{x(0)}" y1="{y(0)}" x2="{x(1)}" y2="{y(1)}" stroke="#999" stroke-dasharray="4 3"></line>']
    for tick in (0, 0.5, 1):
        marks.append(f'<text x="{x(tick)}" y="{y(0) + 16}" text-anchor="middle">{tick:g}</text>'
                     f'<text x="{x(0) - 6}" y="{y(tick) + 4}" text-anchor="end">{tick:g}</text>')
    for b in bins:
        left, right, top = x(b["from"]) + 1, x(b["to"]) - 1, y(b["accuracy"])
        marks.append(f'<rect class="bin" x="{left:.1f}" y="{top:.1f}" width="{right - left:.1f}" '
                     f'height="{y(0) - top:.1f}" fill="#4a90d9" fill-opacity="0.8">'
                     f'<title>{b["from"]:.1f}-{b["to"]:.1f}: {b["images"]} images, mean probability '
                     f'{b["mean_prob"]:.2f}, right {b["accuracy"]:.0%}'
                     f'</title></rect><circle cx="{x(b["mean_prob"]):.1f}" cy="{top:.1f}" r="3" fill="#c0392b">'
                     f'</circle><text x="{(left + right) / 2:.1f}" y="{top - 4:.1f}" text-anchor="middle" '
                     f'font-size="9">{b["images"]}</text>')
    marks.append(f'<text x="{x(0.5)}" y="{y(0) + 32}" text-anchor="middle">top-1 probability</text>'
                 f'<text transform="translate({margin - 28},{y(0.5)}) rotate(-90)" text-anchor="middle">'
                 "share right</text>")
    size = side + 2 * margin
    return (f'<svg class="reliability" width="{size}" height="{size}" font-size="11" role="img" '
            f'aria-label="reliability diagram">{"".join(marks)}</svg>')


def _reliability_section(bins: Sequence[dict]) -> str:
    images = sum(b["images"] for b in bins)
    return ('<section class="calibration"><h2>Is the top-1 probability right as often as it says?</h2>'
            f"<p>The {images} images with a known label, grouped by their top-1 probability: each bar is the share "
            "of a group whose top label is right, the red dot the group's mean probability, the number how many "
            "images it holds. Where the probabilities mean what they say, the bars reach the dashed diagonal. "
            f"Expected calibration error: {calibration_error(bins):.3f}.</p>{reliability_svg(bins)}</section>")


def map_svg(points: Sequence[tuple[float, float]], groups: Sequence[str], names: Sequence[str],
            legend: Sequence[str]) -> str:
    """The map: one circle per image at its point, coloured by its group, with its file name and group as a
    <title> (the browser's tooltip); then the legend, groups in `legend` order with their image counts."""
    colour = {group: PALETTE[i % len(PALETTE)] for i, group in enumerate(legend)}
    xs, ys = zip(*points) if points else ((0.0,), (0.0,))
    x_low, x_high, y_low, y_high = min(xs), max(xs), min(ys), max(ys)
    # One scale for both axes, so that distances on the map are distances between the vectors (as projected).
    scale = min((MAP_WIDTH - 2 * MAP_MARGIN) / ((x_high - x_low) or 1),
                (MAP_HEIGHT - 2 * MAP_MARGIN) / ((y_high - y_low) or 1))
    centre = ((x_high + x_low) / 2, (y_high + y_low) / 2)
    marks = [f'<circle class="mark" cx="{MAP_WIDTH / 2 + (x - centre[0]) * scale:.1f}" '
             f'cy="{MAP_HEIGHT / 2 - (y - centre[1]) * scale:.1f}" r="3.5" fill="{colour[group]}">'
             f"<title>{html.escape(name)}: {html.escape(group)}</title></circle>"
             for (x, y), group, name in zip(points, groups, names)]
    counts = Counter(groups)
    keys = "".join(f'<li><span style="background:{colour[group]}"></span>{html.escape(group)} ({counts[group]})</li>'
                   for group in legend)
    return (f'<svg class="map" width="{MAP_WIDTH}" height="{MAP_HEIGHT}" role="img" aria-label="map of the images">'
            f'{"".join(marks)}</svg><ul class="legend">{keys}</ul>')


def _map_section(points, groups, names, legend, what: str) -> str:
    return (f'<section class="map"><h2>Map</h2><p>Each dot is an image, coloured by {what}; images whose vectors '
            "are alike lie close (the two directions in which the run's vectors differ most). Hover a dot for its "
            f"file name.</p>{map_svg(points, groups, names, legend)}</section>")


def _label_map(run: str, results: Sequence[dict]) -> str:
    """The map of a classify run that kept its embeddings, coloured by top label; '' for one that did not."""
    if not finished_manifest(run).shards.get(EMBEDDINGS):
        return ""
    import numpy as np

    from transforms.topics import map_points

    rows = read_run(run, EMBEDDINGS)
    top = {row["uri"]: str(row["labels"][0]) for row in results}
    rows = [row for row in rows if row["uri"] in top]
    if not rows:
        return ""
    points = map_points(np.asarray([row["embedding"] for row in rows], dtype=np.float32))
    groups = [top[row["uri"]] for row in rows]
    return _map_section(points.tolist(), groups, [PurePosixPath(row["uri"]).name for row in rows],
                        [label for label, _ in Counter(groups).most_common()], "its top label")


def render(results: Sequence[dict], errors: Sequence[dict], thumbs: dict[str, Optional[str]], title: str,
           per_label: int = PER_LABEL, least_sure: int = LEAST_SURE, label_map: str = "",
           review_file: Optional[str] = None, reliability: Optional[Sequence[dict]] = None) -> str:
    """The whole page as a string; `review_file`, the run's review.csv, is offered under the least sure images;
    an evaluated run's `reliability` bins (transforms.reliability) are drawn after the label counts."""
    by_label = _by_label(results)
    counts = Counter({label: len(rows) for label, rows in by_label.items()})
    stages = Counter(row["stage"] for row in errors)
    models = sorted({str(row["model"]) for row in results})
    summary_rows = [("images", len(results) + len(errors)), ("labeled", len(results)),
                    ("top labels in use", len(by_label)),
                    ("errors", ", ".join(f"{stage} {n}" for stage, n in sorted(stages.items())) or "none"),
                    ("model", ", ".join(models) or "-"),
                    ("generated", datetime.datetime.now().isoformat(" ", "seconds"))]
    parts = [f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
             f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>",
             '<table class="summary">' + "".join(f"<tr><td>{html.escape(k)}</td><td>{html.escape(str(v))}</td></tr>"
                                                 for k, v in summary_rows) + "</table>",
             "<p>The number after each label is its probability (for the embedded model, a softmax over the labels "
             "and \"none of these\").</p>",
             "<h2>Top labels</h2>", _bar_chart(counts), _reliability_section(reliability) if reliability else "",
             label_map]
    for label, _ in counts.most_common():
        rows = by_label[label]
        more = len(rows) - per_label
        parts.append(f'<section class="label" data-label="{html.escape(label)}"><h2>{html.escape(label)} '
                     f'({len(rows)})</h2><div class="sheet">{"".join(_figure(r, thumbs) for r in rows[:per_label])}'
                     f'</div>{f"<p class=more>and {more} more</p>" if more > 0 else ""}</section>')
    unsure = _least_sure(results, least_sure)
    offer = (f"<p>To teach the labels, type the right label into the <code>label</code> column of some rows of "
             f"<code>{html.escape(review_file)}</code> (these images and more) and pass the file as "
             "<code>--examples</code> to relabel or classify.</p>" if review_file else "")
    parts.append('<section class="least-sure"><h2>Least sure (lowest top-1 probability first)</h2>'
                 f'<div class="sheet">{"".join(_figure(r, thumbs) for r in unsure)}</div>{offer}</section>')
    parts.append('<section class="errors"><h2>Errors</h2>' + (
        '<table class="errors"><tr><th>uri</th><th>stage</th><th>error</th><th>message</th></tr>' + "".join(
            "<tr>" + "".join(f"<td>{html.escape(str(row[c]))}</td>" for c in ("uri", "stage", "error", "message"))
            + "</tr>" for row in errors) + "</table>" if errors else "<p>none</p>") + "</section>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(run: str, output: str, title: str = "Zero-shot labels", per_label: int = PER_LABEL) -> None:
    """Reads the finished run in folder `run`, fetches the thumbnails it shows, writes the page to `output`; an
    evaluate run's predictions get the reliability diagram of its metrics.json."""
    try:
        results, errors = read_run(run, "results"), read_run(run, "errors")
        review = run_files(run, REVIEW)
    except RunFolderError as e:
        raise ConfigError(str(e)) from None
    shown = {row["uri"] for rows in _by_label(results).values() for row in rows[:per_label]}
    shown |= {row["uri"] for row in _least_sure(results, LEAST_SURE)}
    with fsspec.open(output, "w", encoding="utf-8") as f:
        f.write(render(results, errors, thumbnails(shown), title, per_label, label_map=_label_map(run, results),
                       review_file=review[0] if review else None, reliability=evaluated(run)))


def evaluated(run: str) -> Optional[list[dict]]:
    """The reliability bins of the evaluate run whose predictions are the run in `run` (OUTPUT/predictions, beside
    OUTPUT/metrics.json), or None for any other run."""
    parent, name = posixpath.split(run.rstrip("/"))
    if name != "predictions":
        return None
    try:
        with fsspec.open(posixpath.join(parent, "metrics.json"), "r", encoding="utf-8") as f:
            return json.load(f).get("reliability")
    except FileNotFoundError:
        return None


def render_search(hits: Sequence[dict], thumbs: dict[str, Optional[str]], title: str) -> str:
    """A search run as a page: one contact sheet per query, rank 1 first, the cosine under each image."""
    by_query: dict[str, list[dict]] = {}
    for hit in sorted(hits, key=lambda hit: hit["rank"]):
        by_query.setdefault(hit["query"], []).append(hit)
    parts = [f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
             f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>",
             "<p>The number under each image is its cosine similarity to the query.</p>"]
    for query, rows in by_query.items():
        figures = "".join(_figure({"uri": row["uri"], "labels": [f"#{row['rank']}"], "probs": [row["score"]]}, thumbs)
                          for row in rows)
        parts.append(f'<section class="query" data-query="{html.escape(query)}"><h2>{html.escape(query)}</h2>'
                     f'<div class="sheet">{figures}</div></section>')
    parts.append("</body></html>")
    return "\n".join(parts)


def write_search_report(run: str, output: str, title: str = "Images found by text") -> None:
    """Reads the finished search run in folder `run`, fetches its images' thumbnails, writes the page to `output`."""
    try:
        hits = read_run(run)
    except RunFolderError as e:
        raise ConfigError(str(e)) from None
    with fsspec.open(output, "w", encoding="utf-8") as f:
        f.write(render_search(hits, thumbnails({hit["uri"] for hit in hits}), title))


def render_topics(topics: Sequence[dict], images: Sequence[dict], thumbs: dict[str, Optional[str]],
                  title: str) -> str:
    """A topics run as a page: the map coloured by topic, then each topic's words and its images nearest the centre."""
    topics = sorted(topics, key=lambda row: row["topic"])
    name = {row["topic"]: f"{row['topic']}. {row['name']}" for row in topics}
    parts = [f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
             f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>",
             f"<p>{len(images)} images in {len(topics)} topics, largest first. A topic's name is the vocabulary word "
             "nearest its centre; the number under each image is its cosine to the centre.</p>",
             _map_section([(row["x"], row["y"]) for row in images], [name[row["topic"]] for row in images],
                          [PurePosixPath(row["uri"]).name for row in images], list(name.values()), "its topic")]
    similarity = {image["uri"]: image["similarity"] for image in images}
    for row in topics:
        figures = "".join(_figure({"uri": uri, "labels": [row["name"]], "probs": [similarity.get(uri, 0.0)]}, thumbs)
                          for uri in row["examples"])
        parts.append(f'<section class="topic" data-topic="{row["topic"]}"><h2>{html.escape(name[row["topic"]])} '
                     f'({row["size"]})</h2><p>near: {html.escape(", ".join(row["words"]))}</p>'
                     f'<div class="sheet">{figures}</div></section>')
    parts.append("</body></html>")
    return "\n".join(parts)


def write_topics_report(run: str, output: str, title: str = "Topics") -> None:
    """Reads the finished topics run in folder `run`, fetches its example images' thumbnails, writes the page."""
    try:
        topics, images = read_run(run, "topics"), read_run(run, "images")
    except RunFolderError as e:
        raise ConfigError(str(e)) from None
    with fsspec.open(output, "w", encoding="utf-8") as f:
        f.write(render_topics(topics, images, thumbnails({uri for row in topics for uri in row["examples"]}), title))


def build_parser() -> OneLineParser:
    parser = OneLineParser(prog=pipelines.prog("report"), description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("--run", required=True, help="folder of a finished run of classify_images, relabel, search "
                                                     "or topics (its --output)")
    parser.add_argument("--output", required=True, help="the HTML file to write (any fsspec URL)")
    parser.add_argument("--title", help="the page's title (default: what the run is)")
    parser.add_argument("--per_label", type=int, default=PER_LABEL, help=f"thumbnails per label (default {PER_LABEL})")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args, store_args = build_parser().parse_known_args(argv)
    if unknown := unknown_beam_args(store_args):
        build_parser().error(f"unrecognized arguments: {' '.join(unknown)}")
    use_job_options(PipelineOptions(store_args))  # Beam's store options, e.g. --s3_endpoint_url, reach the run
    try:
        write_any_report(args.run, args.output, args.title, args.per_label)
    except (ConfigError, RunFolderError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except StoreError as e:
        print(f"error: the report failed: StoreError: {e}", file=sys.stderr)
        return 1
    print(f"wrote {args.output}")
    return 0


def write_any_report(run: str, output: str, title: Optional[str], per_label: int = PER_LABEL) -> None:
    """The page of the run in `run`, whichever job made it."""
    titled = {"title": title} if title else {}
    job = finished_manifest(run).job
    if job == "topics":
        write_topics_report(run, output, **titled)
    elif job == "search":
        write_search_report(run, output, **titled)
    else:
        write_report(run, output, per_label=per_label, **titled)


if __name__ == "__main__":
    exit_job(main())
