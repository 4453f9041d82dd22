"""Galleries of the worst over/under-segmented samples and the offline HTML dashboard.

The dashboard is ONE self-contained HTML file: plotly.js is embedded from the installed
``plotly`` package (no CDN), images are base64 data URIs (map thumbnails ~96 px), data is
JSON in a ``<script type="application/json">`` block. Nothing is fetched at view time.
The page's template, CSS and JavaScript are package data in ``analysis/dashboard/``.

Images come through callables supplied by the engine, so this module depends on no drawing
code:

- ``view_provider(sample_id, error_kind) -> ErrorView`` (``SampleViews.error_view``): the image with
  exactly the instances the stored facts involve in that error, and their ids;
- ``thumbnails``: ``{sample_id: JPEG/PNG bytes}`` or ``provider(sample_id) -> RGB image | bytes``.
  With a provider only a capped subset is rendered (picks, galleries, then a random draw up to
  ``max_thumbnails``); the cap is logged with counts.
"""

from __future__ import annotations

import base64
import html
import json
import logging
import math
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd

from armbench_segmentation.codecs import json_default
from armbench_segmentation.errors import ArmbenchError
from armbench_segmentation.metrics.sample_evaluation import COUNT_COLUMNS
from armbench_segmentation.splits import SPLITS

logger = logging.getLogger(__name__)

# gallery -> (error kind of metrics.sample_evaluation.ERROR_KINDS, its count column, title)
GALLERY_KINDS = {
    "over": ("over_segmented", COUNT_COLUMNS["over_segmented"],
             "Worst over-segmentation (one object split into several predictions)"),
    "under": ("under_segmenting", COUNT_COLUMNS["under_segmenting"],
              "Worst under-segmentation (several objects merged into one prediction)"),
}
THUMB_SIDE = 96
DEFAULT_MAX_THUMBNAILS = 1000
MAX_METRICS = 24
MAX_TABLE_ROWS = 200
PREFERRED_METRICS = ("loss", "error_rate", "over_segmented_count", "under_segmented_count", "f1", "precision", "recall",
                     "mean_iou", "sample_ap", "ap", "yolo_loss_total", "tp", "fp", "fn", "n_pred", "mean_score")
HIDDEN_NUMERIC = {"image_id", "width", "height", "map_x", "map_y", "cluster", "over_segmented", "under_segmented"}
PANEL_FIELDS = ("loss", "error_rate", "over_segmented_count", "under_segmented_count", "f1", "mean_iou",
                "unc_mask_entropy", "meta_n_objects", "meta_tote_color")


# --------------------------------------------------------------------------------------
# Galleries
# --------------------------------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class ErrorView:
    """A drawn error view of one sample: the image and exactly the instances drawn.

    Attributes:
        image: (S, S, 3) uint8 RGB, model frame.
        kind: the error kind (``metrics.sample_evaluation.ERROR_KINDS``).
        gt_ids / pred_ids: positions of the drawn GT objects / predictions (the stored facts).
        counted: the drawn instances the per-sample count of ``kind`` counts (e.g. the split
            GT objects of ``over_segmented``).
    """

    image: np.ndarray
    kind: str
    gt_ids: tuple[int, ...]
    pred_ids: tuple[int, ...]
    counted: tuple[int, ...]


@dataclass(frozen=True)
class GalleryItem:
    sample_id: str
    caption: str
    image: bytes  # encoded JPEG/PNG
    mime: str = "image/jpeg"
    path: Path | None = None
    count: int = 0  # the sample's stored count of the gallery's error (the caption's number)
    drawn_gt: tuple[int, ...] = ()  # positions of the GT objects drawn
    drawn_pred: tuple[int, ...] = ()  # positions of the predictions drawn
    drawn_counted: tuple[int, ...] = ()  # the drawn instances the count counts


@dataclass(frozen=True)
class Gallery:
    kind: str  # "over" | "under"
    title: str
    items: list[GalleryItem] = field(default_factory=list)
    notes: tuple[str, ...] = ()


def worst_samples(frame: pd.DataFrame, kind: str, n: int = 12) -> pd.DataFrame:
    """Labeled rows with at least one ``kind`` error, worst first (count desc, then loss desc).

    Args:
        kind: "over" or "under".
    Returns:
        up to ``n`` rows of ``frame`` (original index kept).
    """
    if kind not in GALLERY_KINDS:
        raise ValueError(f"gallery kind must be one of {sorted(GALLERY_KINDS)}, got {kind!r}")
    column = GALLERY_KINDS[kind][1]
    if column not in frame.columns or len(frame) == 0:
        return frame.iloc[:0]
    count = pd.to_numeric(frame[column], errors="coerce").fillna(0)
    loss = pd.to_numeric(frame["loss"], errors="coerce").fillna(-1) if "loss" in frame.columns else count * 0
    ranked = pd.DataFrame({"count": count, "loss": loss}, index=frame.index)
    ranked = ranked[ranked["count"] > 0].sort_values(["count", "loss"], ascending=False, kind="stable")
    return frame.loc[ranked.index[:n]]


def build_gallery(frame: pd.DataFrame, kind: str, view_provider: Callable[[str, str], Any], n: int = 12,
                  out_dir: str | Path | None = None, max_side: int = 640, fmt: str = "jpg") -> Gallery:
    """Render the ``n`` worst samples of ``kind`` through ``view_provider``.

    Args:
        view_provider: ``(sample_id, error_kind) -> ErrorView`` (an image plus the instances
            drawn); a sample whose provider raises :class:`ArmbenchError` (missing image...)
            is skipped with a warning. A view whose drawn instances do not match the stored
            count is a bug and raises.
        out_dir: when given, images are also written to ``out_dir/galleries/<kind>/``.
        max_side: images are downscaled so their long side is at most this.
        fmt: "jpg" or "png".
    """
    if fmt not in ("jpg", "png"):
        raise ValueError(f"fmt must be 'jpg' or 'png', got {fmt!r}")
    rows = worst_samples(frame, kind, n)
    folder = Path(out_dir) / "galleries" / kind if out_dir is not None else None
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
    items, skipped = [], []
    error_kind, column, title = GALLERY_KINDS[kind]
    for rank, (_, row) in enumerate(rows.iterrows(), start=1):
        sid = str(row.get("sample_id", row.name))
        try:
            view = view_provider(sid, error_kind)
        except ArmbenchError as exc:
            skipped.append(sid)
            logger.warning("gallery %s: skipping %s (%s)", kind, sid, exc)
            continue
        count = int(_num(row.get(column)) or 0)
        if len(view.counted) != count:
            raise RuntimeError(f"gallery {kind}: sample {sid!r} has {column}={count} but its stored facts involve "
                               f"{len(view.counted)} instances; the store is inconsistent (a bug)")
        data = encode_image(view.image, max_side=max_side, fmt=fmt)
        loss = _num(row.get("loss"))
        caption = f"#{rank} {sid}: {count} {kind}-segmented" + (f", loss {loss:.2f}" if loss is not None else "")
        path = None
        if folder is not None:
            path = folder / f"{rank:02d}_{sid}.{fmt}"
            path.write_bytes(data)
        items.append(GalleryItem(sid, caption, data, "image/jpeg" if fmt == "jpg" else "image/png", path, count,
                                 tuple(view.gt_ids), tuple(view.pred_ids), tuple(view.counted)))
    notes = (f"{len(skipped)} samples skipped (image unavailable): {', '.join(skipped[:5])}",) if skipped else ()
    return Gallery(kind, title, items, notes)


def encode_image(image: Any, max_side: int | None = None, fmt: str = "jpg", quality: int = 85) -> bytes:
    """RGB uint8 (H, W, 3) (or (H, W) gray) -> JPEG/PNG bytes, downscaled to ``max_side``."""
    import cv2

    img = np.asarray(image)
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    if img.ndim != 3 or img.shape[2] not in (3, 4) or img.size == 0:
        raise ValueError(f"expected an RGB image (H, W, 3) uint8, got shape {img.shape}")
    img = img[:, :, :3]
    if img.dtype != np.uint8:
        img = np.clip(img, 0, 255).astype(np.uint8)
    h, w = img.shape[:2]
    if max_side and max(h, w) > max_side:
        s = max_side / max(h, w)
        img = cv2.resize(img, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA)
    bgr = cv2.cvtColor(np.ascontiguousarray(img), cv2.COLOR_RGB2BGR)
    ok, buf = (cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, quality]) if fmt == "jpg"
               else cv2.imencode(".png", bgr))
    if not ok:
        raise ValueError("image encoding failed")
    return buf.tobytes()


def _data_uri(data: bytes, mime: str | None = None) -> str:
    if mime is None:
        mime = "image/png" if data[:8] == b"\x89PNG\r\n\x1a\n" else "image/jpeg"
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


# --------------------------------------------------------------------------------------
# Dashboard
# --------------------------------------------------------------------------------------

def _num(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _round(values: np.ndarray, digits: int = 4) -> list[float | None]:
    out = []
    for v in values:
        if v is None or not np.isfinite(v):
            out.append(None)
        elif float(v).is_integer():
            out.append(int(v))
        else:
            out.append(float(f"{v:.{digits}g}"))
    return out


def _metric_columns(frame: pd.DataFrame) -> list[str]:
    numeric = [c for c in frame.columns if c not in HIDDEN_NUMERIC and pd.api.types.is_numeric_dtype(frame[c])
               and not pd.api.types.is_bool_dtype(frame[c]) and frame[c].notna().any()]
    ordered = [c for c in PREFERRED_METRICS if c in numeric]
    ordered += [c for c in numeric if str(c).startswith("unc_") and c not in ordered]
    ordered += [c for c in numeric if str(c).startswith("meta_") and c not in ordered]
    ordered += [c for c in numeric if c not in ordered and not str(c).startswith("yolo_loss_")]
    if len(ordered) > MAX_METRICS:
        logger.info("dashboard: %d numeric columns, the first %d are offered for coloring", len(ordered), MAX_METRICS)
    return ordered[:MAX_METRICS]


def _thumbnail_uris(frame: pd.DataFrame, thumbnails: Any, priority: Sequence[str], max_thumbnails: int,
                    seed: int = 0) -> dict[str, str]:
    if thumbnails is None:
        return {}
    ids = frame["sample_id"].astype(str).tolist() if "sample_id" in frame.columns else []
    if isinstance(thumbnails, Mapping):
        return {str(k): _data_uri(bytes(v)) for k, v in thumbnails.items() if v is not None}
    if not callable(thumbnails):
        raise TypeError(f"thumbnails must be a dict sample_id -> bytes or a callable, got {type(thumbnails).__name__}")
    wanted, seen = [], set()
    for sid in list(priority) + list(np.random.default_rng(seed).permutation(ids)):
        if sid not in seen:
            seen.add(sid)
            wanted.append(sid)
    if len(wanted) > max_thumbnails:
        logger.warning("dashboard: thumbnails for %d of %d samples (picks and galleries first; raise "
                       "max_thumbnails for more, at ~4 KB each)", max_thumbnails, len(wanted))
        wanted = wanted[:max_thumbnails]
    out, failed = {}, 0
    for sid in wanted:
        try:
            value = thumbnails(sid)
        except ArmbenchError:
            failed += 1
            continue
        if value is None:
            continue
        data = bytes(value) if isinstance(value, (bytes, bytearray, memoryview)) else \
            encode_image(value, max_side=THUMB_SIDE, quality=80)
        out[sid] = _data_uri(data)
    if failed:
        logger.warning("dashboard: %d thumbnails could not be made (image unavailable)", failed)
    return out


def _definitions(columns: Sequence[str]) -> dict[str, str]:
    """Column -> "definition (range; higher is worse)" from ``analysis.columns``."""
    from armbench_segmentation.analysis.columns import describe

    arrow = {"worse": "higher is worse", "better": "higher is better", "": ""}
    out = {}
    for c in columns:
        d = describe(c)
        if d is not None:
            extra = "; ".join(x for x in (d.range, arrow[d.direction]) if x)
            out[c] = d.definition + (f" ({extra})" if extra else "")
    return out


def _map_payload(frame: pd.DataFrame, map_xy: np.ndarray, thumbs: dict[str, str], insights: dict[int, str]) -> dict:
    n = len(frame)
    splits = frame["split"].astype(str).to_numpy() if "split" in frame.columns else np.full(n, "all")
    split_names = [s for s in SPLITS if s in set(splits)] + sorted(set(splits) - set(SPLITS))
    code = {s: i for i, s in enumerate(split_names)}
    clusters = (pd.to_numeric(frame["cluster"], errors="coerce").fillna(-1).astype(int).tolist()
                if "cluster" in frame.columns else [0] * n)
    metrics = {c: _round(pd.to_numeric(frame[c], errors="coerce").to_numpy(np.float64, na_value=np.nan))
               for c in _metric_columns(frame)}
    panel = {}
    for c in PANEL_FIELDS:
        if c in frame.columns and c not in metrics:
            panel[c] = [None if pd.isna(v) else str(v) for v in frame[c]]
    return {
        "ids": frame["sample_id"].astype(str).tolist() if "sample_id" in frame.columns else [str(i) for i in range(n)],
        "x": _round(map_xy[:, 0].astype(np.float64), 5), "y": _round(map_xy[:, 1].astype(np.float64), 5),
        "split": [code[s] for s in splits], "splits": split_names, "cluster": clusters,
        "clusters": sorted(set(clusters)), "insights": {str(k): v for k, v in insights.items()},
        "metrics": metrics, "panel": panel, "panel_fields": [c for c in PANEL_FIELDS if c in metrics or c in panel],
        "definitions": _definitions(metrics),
        "thumbs": thumbs,
    }


def _table(df: pd.DataFrame, columns: Sequence[str], headers: Sequence[str] | None = None, table_id: str = "",
           row_attrs: Callable[[Any], str] | None = None, cell_html: dict[str, Callable[[Any], str]] | None = None) -> str:
    headers = headers or columns
    cell_html = cell_html or {}
    parts = [f'<table id="{table_id}"><thead><tr>' + "".join(f"<th>{html.escape(h)}</th>" for h in headers)
             + "</tr></thead><tbody>"]
    for _, row in df.iterrows():
        attrs = row_attrs(row) if row_attrs else ""
        cells = []
        for c in columns:
            v = row.get(c)
            if c in cell_html:
                cells.append(f"<td>{cell_html[c](row)}</td>")
            elif isinstance(v, float):
                cells.append("<td></td>" if not math.isfinite(v) else f"<td class=num>{v:.3g}</td>")
            else:
                cells.append(f"<td>{html.escape('' if v is None else str(v))}</td>")
        parts.append(f"<tr {attrs}>" + "".join(cells) + "</tr>")
    parts.append("</tbody></table>")
    return "".join(parts)


def _clusters_html(clusters: Any) -> str:
    if clusters is None or not getattr(clusters, "summaries", None):
        return "<p class=muted>No clusters computed.</p>"
    rows = []
    for s in clusters.summaries:
        mix = ", ".join(f"{k} {v}" for k, v in sorted(s.split_counts.items()))
        rows.append({"cluster": s.cluster_id, "size": s.size, "mix": mix, "mean_loss": s.mean_loss,
                     "over": s.over_rate, "under": s.under_rate,
                     "unc": next(iter(s.mean_uncertainty.values()), None) if s.mean_uncertainty else None,
                     "insight": s.insight})
    df = pd.DataFrame(rows)
    unc_name = next((k for s in clusters.summaries for k in s.mean_uncertainty), "uncertainty")
    pct = lambda c: (lambda r: "" if r[c] is None or pd.isna(r[c]) else f"{100 * r[c]:.0f}%")  # noqa: E731
    return ("<p class=muted>Click a row to show only that cluster on the map.</p>"
            + _table(df, ["cluster", "size", "mix", "mean_loss", "over", "under", "unc", "insight"],
                     ["cluster", "size", "split mix", "mean loss", "over-seg.", "under-seg.", f"mean {unc_name}",
                      "insight"], "cluster-table", row_attrs=lambda r: f'class=clickable data-cluster="{int(r["cluster"])}"',
                     cell_html={"over": pct("over"), "under": pct("under")}))


def _picks_html(label_picks: Any, thumbs: dict[str, str]) -> str:
    if label_picks is None:
        return "<p class=muted>No labeling picks.</p>"
    p = label_picks.picks
    if p.empty:
        return "<p class=muted>No unlabeled samples to pick from.</p>"
    prov = label_picks.provenance
    head = (f"<p>{len(p)} picks, strategy <b>{html.escape(str(prov.get('strategy')))}</b> "
            f"from {html.escape(str(prov.get('n_candidates')))} unlabeled samples "
            f"({html.escape(str(prov.get('n_labeled')))} labeled). "
            + "; ".join(html.escape(n) for n in prov.get("notes", [])) + ".</p>")
    shown = p.head(MAX_TABLE_ROWS)
    more = f"<p class=muted>First {MAX_TABLE_ROWS} of {len(p)} shown; all are in the CSV.</p>" if len(p) > len(shown) else ""

    def thumb(r):
        uri = thumbs.get(str(r["sample_id"]))
        return f'<img class=thumb src="{uri}" alt="">' if uri else ""

    return head + _table(shown, ["rank", "thumb", "sample_id", "score", "reason"],
                         ["rank", "", "sample", "score", "why"], "picks-table",
                         cell_html={"thumb": thumb}) + more


def _prune_html(prune_result: Any) -> str:
    if prune_result is None:
        return "<p class=muted>No pruning computed.</p>"
    d, s, prov = prune_result.decisions, prune_result.summary, prune_result.provenance
    if d.empty:
        return "<p class=muted>No training samples to prune.</p>"
    kept = int(d["keep"].sum())
    n_bands = int(prov.get("n_bands", 0))
    head = (f"<p>Keep <b>{kept}</b> of {len(d)} training images ({kept / len(d):.0%}; target "
            f"{html.escape(str(prov.get('keep_fraction')))} per cluster, prefer <b>{html.escape(str(prov.get('prefer')))}</b>), "
            f"drop {len(d) - kept}, of which {int(d['duplicate_of'].notna().sum())} near-duplicates. "
            "Bands run from nearest to farthest from the cluster centroid.</p>")
    s = s.copy()
    cols, headers = ["cluster", "size", "kept", "dropped", "duplicates_dropped"], \
        ["cluster", "size", "kept", "dropped", "near-dup. dropped"]
    for b in range(n_bands):
        if f"kept_band_{b}" in s:
            s[f"band_{b}"] = s[f"kept_band_{b}"].astype(str) + " / " + s[f"size_band_{b}"].astype(str)
            cols.append(f"band_{b}")
            headers.append(f"band {b + 1} kept")
    dropped = d[~d["keep"]].head(20)
    return (head + _table(s, cols, headers, "prune-table")
            + "<h3>Examples of dropped images</h3>"
            + _table(dropped, ["sample_id", "cluster", "reason"], ["sample", "cluster", "why"], "prune-drop-table"))


def _galleries_html(galleries: Any) -> str:
    if not galleries:
        return "<p class=muted>No galleries.</p>"
    items = galleries.values() if isinstance(galleries, Mapping) else galleries
    parts = []
    for g in items:
        parts.append(f"<h3>{html.escape(g.title)}</h3>")
        if not g.items:
            parts.append("<p class=muted>No sample with this error.</p>")
            continue
        parts.append(f'<div class=gallery id="gallery-{html.escape(g.kind)}">')
        for it in g.items:
            parts.append(f'<figure><img src="{_data_uri(it.image, it.mime)}" alt="{html.escape(it.sample_id)}">'
                         f"<figcaption>{html.escape(it.caption)}</figcaption></figure>")
        parts.append("</div>")
        for note in g.notes:
            parts.append(f"<p class=muted>{html.escape(note)}</p>")
    return "".join(parts)


# characters that can end or re-open a <script> element (``</script>``, ``<!--``), start
# an entity, or end a JavaScript string (U+2028/U+2029) -> their JSON \u escapes
_SCRIPT_UNSAFE = {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}
_SCRIPT_UNSAFE_RE = re.compile("[<>&\u2028\u2029]")


def script_json(obj: Any) -> str:
    """JSON that is safe as the text of any ``<script>`` element: ``<``, ``>``, ``&``,
    U+2028 and U+2029 become ``\\uXXXX`` escapes (the same value once parsed), NaN is refused.
    The one way this module embeds JSON in the page."""
    text = json.dumps(obj, allow_nan=False, separators=(",", ":"), default=json_default)
    return _SCRIPT_UNSAFE_RE.sub(lambda m: _SCRIPT_UNSAFE[m.group(0)], text)


def _asset(name: str) -> str:
    """A file of the page, shipped as package data in ``analysis/dashboard/``: ``page.html``
    (a ``str.format`` template: ``{name}`` placeholders, ``{{``/``}}`` literal braces),
    ``style.css`` and ``app.js`` (inserted verbatim)."""
    return resources.files(__package__).joinpath("dashboard", name).read_text(encoding="utf-8")


def write_report(out_dir: str | Path, frame: pd.DataFrame, map_xy: Any, clusters: Any = None, label_picks: Any = None,
                 prune_result: Any = None, galleries: Any = None, thumbnails: Any = None,
                 provenance: Mapping[str, Any] | None = None, *, title: str = "ARMBench segmentation analysis",
                 file_name: str = "dashboard.html", max_thumbnails: int = DEFAULT_MAX_THUMBNAILS, seed: int = 0) -> Path:
    """Write the offline dashboard and return its path.

    Args:
        out_dir: folder (created).
        frame: one row per sample (``sample_id``, ``split``, metrics, ``unc_*``, ``meta_*``;
            an optional ``cluster`` column, else ``clusters.labels`` is used).
        map_xy: (n, 2) map coordinates aligned with ``frame`` (or a ``Projection``).
        clusters: ``clustering.ClusterResult`` or None.
        label_picks: ``selection.LabelingResult`` or None.
        prune_result: ``selection.PruneResult`` or None.
        galleries: list (or dict) of :class:`Gallery`.
        thumbnails: ``{sample_id: bytes}`` or ``provider(sample_id) -> RGB image | bytes`` or None.
        provenance: run description shown at the bottom (model hash, settings, ...).
    """
    xy = np.asarray(getattr(map_xy, "xy", map_xy), dtype=np.float64)
    if xy.shape != (len(frame), 2):
        raise ValueError(f"map_xy must have shape ({len(frame)}, 2) aligned with the frame, got {xy.shape}")
    from armbench_segmentation.analysis.clustering import with_prefixes

    frame = with_prefixes(frame.reset_index(drop=True), rename=True).copy()
    if "cluster" not in frame.columns and clusters is not None and len(getattr(clusters, "labels", [])) == len(frame):
        frame["cluster"] = np.asarray(clusters.labels)
    insights = {s.cluster_id: s.insight for s in getattr(clusters, "summaries", None) or []}
    priority = []
    if label_picks is not None:
        priority += label_picks.picks["sample_id"].astype(str).tolist()
    for g in (galleries.values() if isinstance(galleries, Mapping) else galleries or []):
        priority += [it.sample_id for it in g.items]
    thumbs = _thumbnail_uris(frame, thumbnails, priority, max_thumbnails, seed)
    payload = _map_payload(frame, xy, thumbs, insights)
    import plotly.offline

    counts = pd.Series(payload["split"]).map(dict(enumerate(payload["splits"]))).value_counts().to_dict()
    summary = ", ".join(f"{v} {k}" for k, v in counts.items())
    prov = dict(provenance or {})
    if label_picks is not None:
        prov.setdefault("labeling", label_picks.provenance)
    if prune_result is not None:
        prov.setdefault("pruning", prune_result.provenance)
    page = _asset("page.html").format(
        title=html.escape(title), summary=html.escape(summary or "no samples"),
        plotly_js=plotly.offline.get_plotlyjs(), data=script_json(payload),
        clusters=_clusters_html(clusters), picks=_picks_html(label_picks, thumbs),
        prune=_prune_html(prune_result), galleries=_galleries_html(galleries),
        provenance=html.escape(json.dumps(prov, indent=2, default=json_default)),
        css=_asset("style.css"), js=_asset("app.js"),
    )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / file_name
    path.write_text(page, encoding="utf-8")
    logger.info("dashboard written to %s (%.1f MB)", path, path.stat().st_size / 1e6)
    return path

