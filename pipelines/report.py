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
import sys
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import PurePosixPath
from typing import Optional, Sequence

import fsspec
from apache_beam.options.pipeline_options import PipelineOptions
from PIL import Image

from pipelines.cli import ConfigError, OneLineParser
from pipelines.jobs import unknown_beam_args
from transforms.decode import decode_image
from transforms.run_folder import RunFolderError, read_run
from transforms.stores import use_job_options

THUMB_SIDE = 256
PER_LABEL = 24  # thumbnails per label section; the rest are counted
LEAST_SURE = 24
READERS = 8

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
table.errors td, table.errors th { border: 1px solid #ddd; padding: 0.2rem 0.4rem; text-align: left; }
"""


def thumbnail(uri: str, side: int = THUMB_SIDE) -> Optional[str]:
    """A data: URI of a JPEG at most `side` px, or None if the image cannot be read or decoded."""
    try:
        with fsspec.open(uri, "rb") as f:
            image = decode_image(f.read(), Image.MAX_IMAGE_PIXELS, side)[0]
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=80)
    except Exception:  # noqa: BLE001 - a thumbnail that fails is a placeholder, never a failed report
        return None
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()


def _top_prob(row: dict) -> float:
    return float(row["probs"][0]) if row["probs"] else 0.0


def _by_label(results: Sequence[dict]) -> dict[str, list[dict]]:
    """Top label -> its rows, most probable first."""
    by_label: dict[str, list[dict]] = {}
    for row in results:
        by_label.setdefault(str(row["labels"][0]), []).append(row)
    return {label: sorted(rows, key=_top_prob, reverse=True) for label, rows in by_label.items()}


def _least_sure(results: Sequence[dict], count: int) -> list[dict]:
    """The `count` rows with the lowest top-1 probability, lowest first."""
    return sorted(results, key=_top_prob)[:count]


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


def render(results: Sequence[dict], errors: Sequence[dict], thumbs: dict[str, Optional[str]], title: str,
           per_label: int = PER_LABEL, least_sure: int = LEAST_SURE) -> str:
    """The whole page as a string."""
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
             "<h2>Top labels</h2>", _bar_chart(counts)]
    for label, _ in counts.most_common():
        rows = by_label[label]
        more = len(rows) - per_label
        parts.append(f'<section class="label" data-label="{html.escape(label)}"><h2>{html.escape(label)} '
                     f'({len(rows)})</h2><div class="sheet">{"".join(_figure(r, thumbs) for r in rows[:per_label])}'
                     f'</div>{f"<p class=more>and {more} more</p>" if more > 0 else ""}</section>')
    unsure = _least_sure(results, least_sure)
    parts.append('<section class="least-sure"><h2>Least sure (lowest top-1 probability first)</h2>'
                 f'<div class="sheet">{"".join(_figure(r, thumbs) for r in unsure)}</div></section>')
    parts.append('<section class="errors"><h2>Errors</h2>' + (
        '<table class="errors"><tr><th>uri</th><th>stage</th><th>error</th><th>message</th></tr>' + "".join(
            "<tr>" + "".join(f"<td>{html.escape(str(row[c]))}</td>" for c in ("uri", "stage", "error", "message"))
            + "</tr>" for row in errors) + "</table>" if errors else "<p>none</p>") + "</section>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(run: str, output: str, title: str = "Zero-shot labels", per_label: int = PER_LABEL) -> None:
    """Reads the finished run in folder `run`, fetches the thumbnails it shows, writes the page to `output`."""
    try:
        results, errors = read_run(run, "results"), read_run(run, "errors")
    except RunFolderError as e:
        raise ConfigError(str(e)) from None
    shown = {row["uri"] for rows in _by_label(results).values() for row in rows[:per_label]}
    shown |= {row["uri"] for row in _least_sure(results, LEAST_SURE)}
    with ThreadPoolExecutor(READERS) as pool:
        thumbs = dict(zip(shown, pool.map(thumbnail, shown)))
    with fsspec.open(output, "w", encoding="utf-8") as f:
        f.write(render(results, errors, thumbs, title, per_label))


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
    uris = sorted({hit["uri"] for hit in hits})
    with ThreadPoolExecutor(READERS) as pool:
        thumbs = dict(zip(uris, pool.map(thumbnail, uris)))
    with fsspec.open(output, "w", encoding="utf-8") as f:
        f.write(render_search(hits, thumbs, title))


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = OneLineParser(prog="python -m pipelines.report", description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("--run", required=True, help="folder of a finished run (classify_images --output)")
    parser.add_argument("--output", required=True, help="the HTML file to write (any fsspec URL)")
    parser.add_argument("--title", default="Zero-shot labels", help="the page's title")
    parser.add_argument("--per_label", type=int, default=PER_LABEL, help=f"thumbnails per label (default {PER_LABEL})")
    args, store_args = parser.parse_known_args(argv)
    if unknown := unknown_beam_args(store_args):
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    use_job_options(PipelineOptions(store_args))  # Beam's store options, e.g. --s3_endpoint_url, reach the run
    try:
        write_report(args.run, args.output, args.title, args.per_label)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
