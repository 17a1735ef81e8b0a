"""A whole detector's report (verify/detect/report.py) through the same outputs as a backbone's: JUnit and
Markdown through the shared writers (verify/render/junit.py, verify/render/markdown.py), and an HTML page
with a detection-level table and each image drawn with every run's boxes (inline SVG over a PNG data URI).
Every string that reaches a page is escaped by the writer of that page."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from verify.detect.verdict import EAGER
from verify.render.junit import rows_junit
from verify.render.markdown import Code, MarkdownPage, markdown_page
from verify.render.rows import CheckRow, Group, format_ratio
from verify.render.text import html_text as escape

if TYPE_CHECKING:
    import numpy as np

    from verify.detect.match import Detections
    from verify.detect.report import DetectorReport

TITLE = "verify export (detector)"
TABLE_HEADER = ["pair", "status", "matched", "borderline", "unexplained", "worst box", "worst score",
                "label mismatches", "worst image"]
MASK_HEADER = ["worst mask", "worst mask head"]
"""A Mask R-CNN's table columns: each pair's worst pasted mask and mask-head logits, in their floors."""
KEYPOINT_HEADER = ["worst keypoint", "worst keypoint score", "worst keypoint head"]
"""A Keypoint R-CNN's table columns: each pair's worst keypoints (x, y), their scores and the keypoint head's heatmap
logits, in their floors."""
BOX_COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b")
"""One colour per run drawn, the reference first."""
"""Eager float32 sits on the float64 reference at this scale: drawn, it would hide it."""
CSS = ("body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}table{border-collapse:collapse;margin:.5em 0}"
       "td,th{border:1px solid #ccc;padding:.2em .5em;text-align:left}.pass{color:#17692b}.fail{color:#b3261e}"
       ".meta{color:#555;margin:.2em 0}figure{display:inline-block;margin:.5em}svg{border:1px solid #ccc}"
       ".key span{display:inline-block;margin-right:1em}")


def detector_rows(report: DetectorReport) -> list[CheckRow]:
    """The report's rows (pair and level, refusal, failed check) as the rows every command renders."""
    group, classname = Group(f"{report.name}:{report.norm}", seconds=sum(report.seconds.values())), \
        f"detector.{report.name}"
    rows = []
    for row in report.rows():
        pair = row.pair
        rows.append(CheckRow(group, row.level, f"{row.level}: {pair}" if pair else row.level,
                             "passed" if row.passed else "failure", row.text, row.worst, row.ratio,
                             classname=classname))
    return rows


def detector_junit(report: DetectorReport) -> str:
    """One suite for the detector, one case per row, by the one JUnit writer."""
    return rows_junit(TITLE, detector_rows(report), sum(report.seconds.values()))


def _ratio(value: float | None) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{format_ratio(value)}x"


def _masked(report: DetectorReport) -> bool:
    """Whether the report judged masks (Mask R-CNN): its table then shows the worst mask and mask-head ratios."""
    return any(p.masks_judged for p in report.detections)


def _keypointed(report: DetectorReport) -> bool:
    """Whether the report judged keypoints (Keypoint R-CNN): its table then shows their worst ratios."""
    return any(p.keypoints_judged for p in report.detections)


def table_header(report: DetectorReport) -> list[str]:
    """TABLE_HEADER, with MASK_HEADER (a Mask R-CNN) or KEYPOINT_HEADER (a Keypoint R-CNN) after the worst score."""
    extra = (MASK_HEADER if _masked(report) else []) + (KEYPOINT_HEADER if _keypointed(report) else [])
    return TABLE_HEADER[:7] + extra + TABLE_HEADER[7:]


def _keypoint_cells(pair: Any) -> list[str]:
    judged = pair.keypoint_judgement if pair.keypoints_judged else None
    return [_ratio(None if judged is None else getattr(judged, name)) for name in
            ("worst_keypoint_ratio", "worst_keypoint_score_ratio", "worst_keypoint_head_ratio")]


def table_rows(report: DetectorReport) -> list[list[str]]:
    """The detection-level table: one row per after-NMS pair."""
    masked, keypointed = _masked(report), _keypointed(report)
    return [[f"{p.a} vs {p.b}", p.status, f"{p.matched} of {sum(p.reference_per_image)}", str(len(p.borderline)),
             str(len(p.unexplained)), _ratio(p.worst_box_ratio), _ratio(p.worst_score_ratio),
             *([_ratio(p.worst_mask_ratio if p.masks_judged else None),
                _ratio(p.worst_mask_head_ratio if p.masks_judged else None)] if masked else []),
             *(_keypoint_cells(p) if keypointed else []),
             str(p.label_mismatches), "-" if p.worst_image is None else str(p.worst_image)]
            for p in report.detections]


def _facts(report: DetectorReport) -> list[str]:
    floor = report.floor
    return [f"images {', '.join(report.image_sizes())}" + (" (dynamic export)" if report.dynamic else ""),
            f"weights {report.weights}", f"formats {', '.join(report.formats)}", f"tolerance {report.factor:g}x "
            "the float32 noise floor"] + ([f"floor: boxes {floor.boxes:.3g}, scores {floor.scores:.3g}" + (
                f", masks {floor.masks:.3g}, mask head {floor.mask_head:.3g}" if floor.masks is not None
                and floor.mask_head is not None else "") + (
                f", keypoints {floor.keypoints:.3g}, keypoint scores {floor.keypoint_scores:.3g}, keypoint head "
                f"{floor.keypoint_head:.3g}" if None not in (floor.keypoints, floor.keypoint_scores,
                                                             floor.keypoint_head) else "")] if floor else [])


def detector_page(report: DetectorReport) -> MarkdownPage:
    failed = [r for r in report.rows() if not r.passed]
    items = [(r.pair or r.level, r.text) for r in failed]
    borderline = [(f"{p.a} vs {p.b}", b.describe()) for p in report.detections for b in p.borderline]
    before = [(r.pair, r.text) for r in report.rows() if r.level == "before NMS"]
    return MarkdownPage(
        f"{TITLE}: {report.name}:{report.norm}", report.passed, report.summary(), _facts(report),
        "After NMS: detections matched by IoU per image and class; worst box and score" + (
            ", pasted mask and mask-head logits" if _masked(report) else "") + (
            ", keypoints, keypoint scores and keypoint-head logits" if _keypointed(report) else "")
        + " as multiples of the float32 noise floor of detections.",
        table_header(report), ["---", "---", *["---:"] * (len(table_header(report)) - 2)],
        [[Code(row[0]), *row[1:]] for row in table_rows(report)],
        [("What failed", items), ("Before NMS", before), ("Borderline (rounding)", borderline)])


def detector_markdown(report: DetectorReport) -> str:
    return markdown_page(detector_page(report))


def png_data_uri(image: np.ndarray) -> str:
    """A C x H x W float image in [0, 1] as a PNG data URI."""
    import base64
    import io

    import numpy as np
    from PIL import Image

    pixels = (np.clip(np.moveaxis(np.asarray(image, dtype=np.float64), 0, -1), 0.0, 1.0) * 255).round()
    buffer = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8)).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _drawn(report: DetectorReport) -> list[str]:
    """The runs drawn: the float64 reference first, then every runtime (eager float32 sits on the reference at
    this scale: drawn, it would hide it)."""
    return [label for label in report.boxes if label != EAGER]


def _rects(detections: Detections, colour: str, label: str) -> str:
    rects = []
    for (x1, y1, x2, y2), score, cls in zip(detections.boxes, detections.scores, detections.labels, strict=True):
        tip = escape(f"{label}: class {int(cls)}, score {score:.4f}, box ({x1:.1f}, {y1:.1f}, {x2:.1f}, {y2:.1f})")
        rects.append(f'<rect x="{x1:.2f}" y="{y1:.2f}" width="{max(x2 - x1, 0):.2f}" height="{max(y2 - y1, 0):.2f}" '
                     f'fill="none" stroke="{colour}" stroke-width="1"><title>{tip}</title></rect>')
    return "".join(rects)


def _figure(report: DetectorReport, index: int, worst: set[int]) -> str:
    image = report.images[index]
    height, width = image.shape[-2:]
    layers = [_rects(report.boxes[label][index], BOX_COLOURS[k % len(BOX_COLOURS)], label)
              for k, label in enumerate(_drawn(report)) if index < len(report.boxes[label])]
    counts = ", ".join(f"{label} {len(report.boxes[label][index])}" for label in _drawn(report)
                       if index < len(report.boxes[label]))
    caption = f"image {index} ({height}x{width}): {counts}" + (" · worst image" if index in worst else "")
    return (f'<figure><svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}"><image href="{png_data_uri(image)}" width="{width}" height="{height}"/>'
            f'{"".join(layers)}</svg><figcaption>{escape(caption)}</figcaption></figure>')


def _key(report: DetectorReport) -> str:
    return '<p class="key">' + "".join(
        f'<span style="color:{BOX_COLOURS[k % len(BOX_COLOURS)]}">▭ {escape(label)}</span>'
        for k, label in enumerate(_drawn(report))) + "</p>"


def _table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _listing(title: str, items: list[tuple[str, str]]) -> str:
    if not items:
        return ""
    return f"<h2>{escape(title)}</h2><ul>" + "".join(
        f"<li><code>{escape(subject)}</code>: {escape(text)}</li>" for subject, text in items) + "</ul>"


def detector_html(report: DetectorReport) -> str:
    status, mark = ("pass", "✓") if report.passed else ("fail", "✗")
    page = detector_page(report)
    worst = {p.worst_image for p in report.detections if p.worst_image is not None}
    before = [[r.pair, r.status, _ratio(r.ratio), r.worst] for r in report.rows() if r.level == "before NMS"]
    body = [f"<h1>{escape(page.title)}</h1><p class=\"summary {status}\">{mark} {escape(report.summary())}</p>",
            "".join(f'<p class="meta">{escape(f)}</p>' for f in page.facts),
            "<h2>After NMS: detections matched by IoU</h2>", _table(table_header(report), table_rows(report)),
            *(_listing(title, items) for title, items in page.sections if title != "Before NMS"),
            "<h2>Before NMS: dense head tensors</h2>",
            _table(["pair", "status", "worst ratio", "worst tensor"], before) if before else
            "<p class=\"meta\">none judged (TorchScript runs no hooks)</p>",
            "<h2>Images</h2>", _key(report), *(_figure(report, i, worst) for i in range(len(report.images)))]
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{escape(page.title)}</title><style>{CSS}</style></head><body>{''.join(body)}</body></html>\n")

