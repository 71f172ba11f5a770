"""The visual report: for sample queries, the reference image, the modification text and the top-k results
with the target highlighted, failures first. Writes `index.html` and one PNG grid per query.

Colours: blue frame = the query's reference image, green = the target among the results, red = the target
shown after the results when it is not within the top k.
"""

from __future__ import annotations

import html
import os
from pathlib import Path
from typing import Mapping

import datasets
from PIL import Image, ImageDraw, ImageOps

from facap_dataset.captions import join_captions
from facap_dataset.images import load_rgb
from facap_io.atomic import staged_folder
from facap_io.paths import plain_name
from facap_retrieval.ranking import Ranking, RetrievalError

THUMB = 112  # thumbnail side in pixels
LABEL_HEIGHT = 14
BORDER = 4
SHOWN_RESULTS = 10
REPORT_ENTRIES = ("index.html", "png")  # everything a report folder holds
COLOURS = {"reference": (40, 90, 220), "target": (30, 160, 60), "missed": (210, 40, 40), "other": (235, 235, 235)}


def sample_queries(ranking: Ranking, num_samples: int, shown: int) -> list[int]:
    """Query indices to show: failures (target not in the shown top k) first, then hits, each in data order."""
    if len(ranking.target_ranks) == 0:
        return list(range(min(num_samples, len(ranking.indices))))
    ranks = ranking.target_ranks.tolist()
    failures = [i for i, rank in enumerate(ranks) if rank >= shown]
    hits = [i for i, rank in enumerate(ranks) if rank < shown]
    return (failures + hits)[:num_samples]


def _thumbnail(image: Image.Image, label: str, colour: tuple[int, int, int]) -> Image.Image:
    tile = Image.new("RGB", (THUMB, THUMB + LABEL_HEIGHT), "white")
    framed = ImageOps.pad(image, (THUMB - 2 * BORDER, THUMB - 2 * BORDER), color="white")
    tile.paste(ImageOps.expand(framed, border=BORDER, fill=colour), (0, 0))
    ImageDraw.Draw(tile).text((2, THUMB + 1), label, fill="black")
    return tile


def _tail(image_id: str, width: int = 14) -> str:
    """The end of an id, which tells catalogue ids apart (their prefixes are shared)."""
    return image_id if len(image_id) <= width else ".." + image_id[-(width - 2):]


def _image(dataset: datasets.Dataset, row: int, column: str, name: str) -> Image.Image:
    return load_rgb(dataset[row][column]["bytes"], name=name)


def _grid(tiles: list[Image.Image]) -> Image.Image:
    grid = Image.new("RGB", (len(tiles) * (THUMB + BORDER), THUMB + LABEL_HEIGHT), "white")
    for position, tile in enumerate(tiles):
        grid.paste(tile, (position * (THUMB + BORDER), 0))
    return grid


def _query_figure(triplets, gallery, gallery_ids, ranking: Ranking, query: int, shown: int) -> tuple[Image.Image, dict]:
    triplet = triplets[query]
    target_id = triplet["target_id"]
    tiles = [_thumbnail(_image(triplets, query, "reference_image", triplet["reference_id"]), "reference", COLOURS["reference"])]
    for position, row in enumerate(ranking.indices[query, :shown].tolist()):
        colour = COLOURS["target"] if gallery_ids[row] == target_id else COLOURS["other"]
        tiles.append(_thumbnail(_image(gallery, row, "image", gallery_ids[row]), f"{position + 1}. {_tail(gallery_ids[row])}", colour))
    rank = int(ranking.target_ranks[query]) if len(ranking.target_ranks) else None
    if target_id is not None and (rank is None or rank >= shown) and triplet["target_image"] is not None:
        label = "target (missing)" if target_id not in gallery_ids else f"target >{shown}"
        tiles.append(_thumbnail(_image(triplets, query, "target_image", target_id), label, COLOURS["missed"]))
    facts = {"reference": triplet["reference_id"], "target": target_id, "rank": rank, "captions": triplet["captions"]}
    return _grid(tiles), facts


def _section_html(name: str, metrics: Mapping, figures: list[tuple[str, dict, str]], shown: int) -> str:
    recalls = ", ".join(f"{key.replace('recall', 'R')} {value:.2f}" for key, value in metrics.items() if key.startswith("recall@"))
    parts = [f"<h2>{html.escape(name)}</h2>", f"<p>{html.escape(recalls or 'targets hidden')}</p>"]
    for png, facts, text in figures:
        if facts["target"] is None:
            verdict = "target hidden"
        elif facts["rank"] < shown:
            verdict = f"hit: target at rank {facts['rank'] + 1}"
        else:
            verdict = f"miss: target not in the top {shown}"
        parts.append(
            f'<figure class="{"miss" if verdict.startswith("miss") else "hit"}"><img src="{html.escape(png)}" '
            f'alt="query {html.escape(facts["reference"])}"><figcaption><b>{html.escape(text)}</b><br>'
            f"reference {html.escape(facts['reference'])} &rarr; target {html.escape(str(facts['target']))} "
            f"&middot; {html.escape(verdict)}</figcaption></figure>"
        )
    return "\n".join(parts)


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>body{{font-family:sans-serif;margin:2em}} figure{{margin:1em 0}} figure.miss figcaption{{color:#b22}}
img{{max-width:100%}} .legend span{{padding:0 .5em;color:white}}</style></head><body>
<h1>{title}</h1>
<p class="legend"><span style="background:#285adc">reference</span> <span style="background:#1ea03c">target</span>
<span style="background:#d22828">target outside the top {shown}</span> &middot; failures first &middot; {protocol}</p>
{sections}
</body></html>
"""


def check_report_folder(report_dir: str | os.PathLike) -> None:
    """Refuse a report folder holding anything a report does not write: a report replaces its folder whole,
    and files the program did not write are never deleted."""
    folder = Path(report_dir)
    if folder.is_dir():
        foreign = sorted(entry.name for entry in folder.iterdir() if entry.name not in REPORT_ENTRIES)
        if foreign:
            raise RetrievalError(
                f"report folder {folder} holds files a report does not write ({', '.join(foreign[:3])}); "
                "a report replaces its folder whole: give a new or empty folder"
            )


def write_report(
    report_dir: str | os.PathLike,
    sections: Mapping[str, tuple[datasets.Dataset, datasets.Dataset, Ranking]],
    results: Mapping,
    *,
    caption_join: str = "fashioniq",
    num_samples: int = 24,
    shown: int = SHOWN_RESULTS,
) -> Path:
    """Write `report_dir/index.html` and `report_dir/png/*.png`; replaces an earlier report as a whole (an
    interrupted write leaves the earlier report in place)."""
    for name in sections:
        plain_name(name, what="report section")
    check_report_folder(report_dir)
    with staged_folder(report_dir) as build:
        (build / "png").mkdir()
        html_sections = []
        for name, (triplets, gallery, ranking) in sections.items():
            html_sections.append(_write_section(build, name, triplets, gallery, ranking, results, caption_join, num_samples, shown))
        protocol = results["protocol"]
        page = _PAGE.format(
            title=html.escape(f"{protocol['query_mode']} on {protocol['dataset']['name_or_path']} ({protocol['split']})"),
            shown=min(shown, *(r.k for _, _, r in sections.values())),
            protocol=html.escape(f"caption join {protocol['caption_join']}, exclude reference {protocol['exclude_reference']}"),
            sections="\n".join(html_sections),
        )
        (build / "index.html").write_text(page, encoding="utf-8")
    return Path(report_dir)


def _write_section(build, name, triplets, gallery, ranking, results, caption_join, num_samples, shown) -> str:
    shown = min(shown, ranking.k)
    triplets = triplets.cast_column("reference_image", datasets.Image(decode=False)).cast_column(
        "target_image", datasets.Image(decode=False)
    )
    gallery = gallery.cast_column("image", datasets.Image(decode=False))
    gallery_ids = gallery["image_id"]
    figures = []
    for query in sample_queries(ranking, num_samples, shown):
        grid, facts = _query_figure(triplets, gallery, gallery_ids, ranking, query, shown)
        png = f"png/{name}-{query:05d}.png"
        grid.save(build / png)
        joined = join_captions(facts["captions"], caption_join)
        figures.append((png, facts, " | ".join(joined) if isinstance(joined, list) else joined))
    return _section_html(name, results["configs"][name], figures, shown)
