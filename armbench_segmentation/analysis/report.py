"""Galleries of the worst over/under-segmented samples and the offline HTML dashboard.

The dashboard is one HTML page plus an ``assets/`` folder beside it (share both; nothing is
fetched from the network, and it opens from the file system):

    dashboard.html                      tables, the map's data (JSON in a ``<script type=
                                        "application/json">`` block), CSS and JS inline
    assets/dashboard/gallery/*.jpg      the galleries' images (also under galleries/)
    assets/plotly.min.js                plotly.js, copied once from the installed ``plotly``
                                        package (4.8 MB; no longer inlined into every page)
    assets/dashboard/thumbs/<row>.jpg   96-px thumbnail of every sample, up to
                                        ``max_thumbnails`` (DEFAULT_MAX_THUMBNAILS = 5,000) samples
    assets/dashboard/views/<row>.jpg    the larger view (model frame, 640 px) of up to
                                        ``max_views`` (DEFAULT_MAX_VIEWS = 64) samples, with
        <row>_gt.png, <row>_pred.png    its ground-truth and prediction overlays as transparent
                                        layers the page stacks and toggles

Files are named by row, never by sample id (ids are dataset strings). Larger runs get
thumbnails and views for the gallery samples and labeling picks first, then a random draw,
and the page says how many are embedded and how to open everything in ``armbench serve``.
No absolute path of the machine appears in the page: the provenance shows paths relative to
the run folder or ``~``, other absolute paths by their last component.

Images come through callables supplied by the engine, so this module depends on no drawing
code:

- ``view_provider(sample_id, error_kind) -> ErrorView`` (``SampleViews.error_view``): the image with
  exactly the instances the stored facts involve in that error, and their ids;
- ``thumbnails``: ``{sample_id: JPEG/PNG bytes}`` or ``provider(sample_id) -> RGB image | bytes``;
- ``layers``: ``provider(sample_id) -> SampleLayers`` (the image and its GT / prediction overlays,
  drawn from the stored results; :func:`layer_from_drawing` turns a drawing function into a
  transparent layer).
"""

from __future__ import annotations

import base64
import html
import json
import logging
import math
import os
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence
from urllib.parse import quote

import numpy as np
import pandas as pd

from armbench_segmentation.codecs import finite_float, json_default
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
DEFAULT_MAX_THUMBNAILS = 5000  # thumbnails for every sample of runs up to this size (~4 KB each)
DEFAULT_MAX_VIEWS = 64  # larger views with overlays (~100 KB and ~1 s each: the stored predictions decoded at full size)
VIEW_SIDE = 640
ASSETS_DIR = "assets"
MAX_CATEGORY_LEVELS = 30  # text columns with more distinct values are not offered for colour
CATEGORY_HIDDEN = {"sample_id", "file_name", "split", "cluster"}
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
        count = int(finite_float(row.get(column)) or 0)
        if len(view.counted) != count:
            raise RuntimeError(f"gallery {kind}: sample {sid!r} has {column}={count} but its stored facts involve "
                               f"{len(view.counted)} instances; the store is inconsistent (a bug)")
        data = encode_image(view.image, max_side=max_side, fmt=fmt)
        loss = finite_float(row.get("loss"))
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


@dataclass(frozen=True, eq=False)
class SampleLayers:
    """The larger view of one sample: the image and its overlays as transparent layers.

    Attributes:
        image: (S, S, 3) uint8 RGB (model frame).
        gt / pred: (S, S, 4) uint8 RGBA (straight alpha) layers drawn over ``image``: the
            ground truth and the predictions as ``visualize.draw_comparison`` draws them.
    """

    image: np.ndarray
    gt: np.ndarray
    pred: np.ndarray


def layer_from_drawing(draw: Callable[[np.ndarray], np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    """What ``draw(image) -> image`` paints, as an RGBA layer that composites back to it.

    The drawing is rendered over black and over white: a pixel blended as ``(1 - a) * image +
    a * colour`` gives ``a * colour`` on black and ``(1 - a) * 255 + a * colour`` on white, so
    ``a = 1 - (white - black) / 255`` and ``colour = black / a`` (exact up to uint8 rounding).

    Args:
        draw: a drawing function (e.g. ``lambda im: draw_comparison(im, gt, None)``).
        shape: (H, W) of the image it draws on.
    Returns:
        (H, W, 4) uint8, alpha 0 where nothing is drawn.
    """
    h, w = shape
    black = np.asarray(draw(np.zeros((h, w, 3), np.uint8)), np.float32)
    white = np.asarray(draw(np.full((h, w, 3), 255, np.uint8)), np.float32)
    alpha = np.clip(1.0 - (white - black).mean(axis=2) / 255.0, 0.0, 1.0)  # (H, W)
    colour = np.divide(black, alpha[..., None], out=np.zeros_like(black), where=alpha[..., None] > 1e-3)
    out = np.empty((h, w, 4), np.uint8)
    out[..., :3] = np.clip(np.round(colour), 0, 255)
    out[..., 3] = np.round(alpha * 255)
    return out


def _encode_png_rgba(layer: np.ndarray) -> bytes:
    import cv2

    rgba = np.ascontiguousarray(layer)
    ok, buf = cv2.imencode(".png", cv2.cvtColor(rgba, cv2.COLOR_RGBA2BGRA), [cv2.IMWRITE_PNG_COMPRESSION, 6])
    if not ok:
        raise ValueError("PNG encoding failed")
    return buf.tobytes()


@dataclass
class PageAssets:
    """What the page links to, relative to the page (``prefix``) and per row."""

    prefix: str  # "assets/dashboard/"
    thumb: list[int]  # (n,) 1 where assets/<stem>/thumbs/<row>.jpg exists
    view: list[int]  # (n,) 1 where the larger view (views/<row>.jpg + _gt.png + _pred.png) exists
    notes: list[str] = field(default_factory=list)

    def thumb_url(self, row: int) -> str | None:
        return f"{self.prefix}thumbs/{row}.jpg" if self.thumb[row] else None


def _wanted(ids: Sequence[str], priority: Sequence[str], seed: int) -> list[int]:
    """Rows in the order they get images: the priority ids, then a seeded random draw."""
    first = {}
    for i, sid in enumerate(ids):
        first.setdefault(sid, i)
    order, seen = [], set()
    for i in [first[s] for s in priority if s in first] + list(np.random.default_rng(seed).permutation(len(ids))):
        i = int(i)
        if i not in seen:
            seen.add(i)
            order.append(i)
    return order


def plotly_js_path() -> Path:
    """The installed ``plotly`` package's ``plotly.min.js`` (raises ArmbenchError with the fix)."""
    try:
        path = Path(str(resources.files("plotly").joinpath("package_data", "plotly.min.js")))
    except ModuleNotFoundError:
        path = None
    if path is None or not path.is_file():
        raise ArmbenchError("the dashboard needs plotly.js from the 'plotly' package, which is not installed; "
                            "fix: pip install plotly (or write the report with report=False)")
    return path


def _copy_plotly(assets: Path) -> Path:
    """assets/plotly.min.js, copied (atomically) when missing or different from the installed one."""
    from armbench_segmentation.codecs import atomic_write_bytes

    src, dst = plotly_js_path(), assets / "plotly.min.js"
    assets.mkdir(parents=True, exist_ok=True)
    if not (dst.is_file() and dst.stat().st_size == src.stat().st_size):
        atomic_write_bytes(dst, src.read_bytes())
    return dst


def _write_assets(out: Path, stem: str, frame: pd.DataFrame, thumbnails: Any, layers: Any,
                  priority: Sequence[str], max_thumbnails: int, max_views: int, seed: int,
                  extra: Mapping[str, bytes] | None = None) -> PageAssets:
    """Write ``assets/<stem>/`` (thumbnails and larger views) for the page; see the module doc.

    The folder is built beside the final one and swapped in at the end, so a failed write
    never leaves a page pointing at half its images.
    """
    import shutil

    n = len(frame)
    ids = frame["sample_id"].astype(str).tolist() if "sample_id" in frame.columns else [str(i) for i in range(n)]
    final = out / ASSETS_DIR / stem
    tmp = final.with_name(f".{stem}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "thumbs").mkdir(parents=True)
    (tmp / "views").mkdir()
    if extra:
        (tmp / "gallery").mkdir()
        for name, data in extra.items():
            (tmp / "gallery" / name).write_bytes(data)
    result = PageAssets(f"{ASSETS_DIR}/{quote(stem)}/", [0] * n, [0] * n)
    try:
        order = _wanted(ids, priority, seed)
        if thumbnails is not None:
            if isinstance(thumbnails, Mapping):
                by_id = {str(k): v for k, v in thumbnails.items() if v is not None}
                get = lambda sid: by_id.get(sid)  # noqa: E731
            elif callable(thumbnails):
                get = thumbnails
            else:
                raise TypeError(f"thumbnails must be a dict sample_id -> bytes or a callable, "
                                f"got {type(thumbnails).__name__}")
            todo = order[:max_thumbnails]
            if n > max_thumbnails:
                result.notes.append(f"thumbnails for {len(todo)} of {n} samples (gallery samples and labeling "
                                    f"picks first, then a random draw; this page embeds at most {max_thumbnails})")
                logger.warning("dashboard: %s", result.notes[-1])
            failed = 0
            for i in todo:
                try:
                    value = get(ids[i])
                except ArmbenchError:
                    failed += 1
                    continue
                if value is None:
                    continue
                data = bytes(value) if isinstance(value, (bytes, bytearray, memoryview)) else \
                    encode_image(value, max_side=THUMB_SIDE, quality=80)
                (tmp / "thumbs" / f"{i}.jpg").write_bytes(data)
                result.thumb[i] = 1
            if failed:
                logger.warning("dashboard: %d thumbnails could not be made (image unavailable)", failed)
        if layers is not None:
            todo = order[:max_views]
            if n > max_views:
                result.notes.append(f"larger views with overlays for {len(todo)} of {n} samples (gallery samples "
                                    f"and picks first; this page embeds at most {max_views})")
            failed = 0
            for i in todo:
                try:
                    view = layers(ids[i])
                except ArmbenchError:
                    failed += 1
                    continue
                (tmp / "views" / f"{i}.jpg").write_bytes(encode_image(view.image, max_side=VIEW_SIDE, quality=85))
                (tmp / "views" / f"{i}_gt.png").write_bytes(_encode_png_rgba(view.gt))
                (tmp / "views" / f"{i}_pred.png").write_bytes(_encode_png_rgba(view.pred))
                result.view[i] = 1
            if failed:
                logger.warning("dashboard: %d larger views could not be made (image unavailable)", failed)
        old = final.with_name(f".{stem}.old-{os.getpid()}")
        if final.exists():
            final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return result


# --------------------------------------------------------------------------------------
# No absolute paths in the page
# --------------------------------------------------------------------------------------

_ABS_PATH_RE = re.compile(r"(?<![\w.~])(?:[A-Za-z]:[\\/]|/)(?:[^\s\"'<>|*?,;()\[\]{}]+)")


def scrub_paths(value: Any, run_dir: Path) -> Any:
    """``value`` (str / list / dict, nested) with the machine's absolute paths removed: the run
    folder becomes ``RUN_DIR``, the home folder ``~``, any other absolute path its last
    component (``…/name``)."""
    roots = []
    for root, name in ((run_dir, "RUN_DIR"), (Path.home(), "~")):
        for variant in {str(root), str(Path(root).resolve())}:
            if variant not in ("", "/", "."):
                roots.append((variant, name))
    roots.sort(key=lambda r: -len(r[0]))

    def one(text: str) -> str:
        for variant, name in roots:
            text = text.replace(variant, name)
        return _ABS_PATH_RE.sub(lambda m: "…/" + re.split(r"[\\/]", m.group(0).rstrip("/\\"))[-1], text)

    if isinstance(value, str):
        return one(value)
    if isinstance(value, Mapping):
        return {one(str(k)): scrub_paths(v, run_dir) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [scrub_paths(v, run_dir) for v in value]
    if isinstance(value, Path):
        return one(str(value))
    return value


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


def _category_columns(frame: pd.DataFrame) -> dict[str, dict]:
    """Text / boolean columns with 1..MAX_CATEGORY_LEVELS distinct values -> {levels, codes}."""
    out = {}
    for c in frame.columns:
        if c in CATEGORY_HIDDEN or c in HIDDEN_NUMERIC:
            continue
        col = frame[c]
        if pd.api.types.is_numeric_dtype(col) and not pd.api.types.is_bool_dtype(col):
            continue
        values = col.where(col.notna(), None)
        present = values.dropna()
        if present.empty:
            continue
        levels = sorted(present.astype(str).unique().tolist())
        if len(levels) > MAX_CATEGORY_LEVELS:
            continue
        code = {v: k for k, v in enumerate(levels)}
        out[str(c)] = {"levels": levels, "codes": [-1 if v is None else code[str(v)] for v in values]}
    return out


def _map_payload(frame: pd.DataFrame, map_xy: np.ndarray, assets: PageAssets, insights: dict[int, str]) -> dict:
    """The columns dict ``map.js`` draws (its shape is documented at the top of map.js) plus
    what the page's panel and viewer read: ``panel``, ``panel_fields``, ``insights``,
    ``assets`` (URL prefix of the asset folder), ``thumb`` / ``view`` (per row: 1 = file present)."""
    n = len(frame)
    splits = frame["split"].astype(str).to_numpy() if "split" in frame.columns else np.full(n, "all")
    split_names = [s for s in SPLITS if s in set(splits)] + sorted(set(splits) - set(SPLITS))
    code = {s: i for i, s in enumerate(split_names)}
    clusters = (pd.to_numeric(frame["cluster"], errors="coerce").fillna(-1).astype(int).tolist()
                if "cluster" in frame.columns else [0] * n)
    metrics = {c: _round(pd.to_numeric(frame[c], errors="coerce").to_numpy(np.float64, na_value=np.nan))
               for c in _metric_columns(frame)}
    categories = _category_columns(frame)
    panel = {}
    for c in PANEL_FIELDS:  # text fields not already sent as categories (their codes serve the panel)
        if c in frame.columns and c not in metrics and c not in categories:
            panel[c] = [None if pd.isna(v) else str(v) for v in frame[c]]
    return {
        "ids": frame["sample_id"].astype(str).tolist() if "sample_id" in frame.columns else [str(i) for i in range(n)],
        "x": _round(map_xy[:, 0].astype(np.float64), 5), "y": _round(map_xy[:, 1].astype(np.float64), 5),
        "split": [code[s] for s in splits], "splits": split_names, "cluster": clusters,
        "clusters": sorted(set(clusters)), "insights": {str(k): v for k, v in insights.items()},
        "metrics": metrics, "categories": categories, "panel": panel,
        "panel_fields": [c for c in PANEL_FIELDS if c in metrics or c in panel or c in categories],
        "definitions": _definitions(list(metrics) + list(categories) + ["cluster", "split"]),
        "assets": assets.prefix, "thumb": assets.thumb, "view": assets.view,
    }


def _table(df: pd.DataFrame, columns: Sequence[str], headers: Sequence[str] | None = None, table_id: str = "",
           row_attrs: Callable[[Any], str] | None = None, cell_html: dict[str, Callable[[Any], str]] | None = None) -> str:
    headers = headers or columns
    cell_html = cell_html or {}
    # class=sortable: app.js sorts by a header click (numbers by value: data-v, else the text)
    parts = [f'<table id="{table_id}" class=sortable><thead><tr>'
             + "".join(f'<th title="sort by {html.escape(h)}">{html.escape(h)}</th>' for h in headers)
             + "</tr></thead><tbody>"]
    for _, row in df.iterrows():
        attrs = row_attrs(row) if row_attrs else ""
        cells = []
        for c in columns:
            v = row.get(c)
            if c in cell_html:
                cells.append(f"<td>{cell_html[c](row)}</td>")
            elif isinstance(v, float):
                cells.append("<td></td>" if not math.isfinite(v) else f'<td class=num data-v="{v!r}">{v:.3g}</td>')
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


def _picks_html(label_picks: Any, assets: PageAssets, rows: Mapping[str, int]) -> str:
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
        row = rows.get(str(r["sample_id"]))
        uri = assets.thumb_url(row) if row is not None else None
        return f'<img class=thumb loading=lazy src="{html.escape(uri)}" alt="">' if uri else ""

    def attrs(r):
        row = rows.get(str(r["sample_id"]))
        return f'class=clickable data-row="{row}"' if row is not None else ""

    return (head + "<p class=muted>Click a row for the sample's larger view; click a header to sort.</p>"
            + _table(shown, ["rank", "thumb", "sample_id", "score", "reason"], ["rank", "", "sample", "score", "why"],
                     "picks-table", row_attrs=attrs, cell_html={"thumb": thumb}) + more)


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


def _gallery_list(galleries: Any) -> list[Gallery]:
    return list(galleries.values() if isinstance(galleries, Mapping) else galleries or [])


def _gallery_urls(galleries: list[Gallery], stem: str) -> tuple[dict[tuple[str, int], str], dict[str, bytes]]:
    """URL of each gallery image relative to the page, and the files to write for them into
    ``assets/<stem>/gallery/`` (everything the page shows lives under ``assets/``, so the
    page and that one folder are all there is to share)."""
    urls, to_write = {}, {}
    for g in galleries:
        for k, it in enumerate(g.items):
            name = f"{quote(g.kind)}-{k}.{'png' if it.mime == 'image/png' else 'jpg'}"
            to_write[name] = it.image
            urls[(g.kind, k)] = f"{ASSETS_DIR}/{quote(stem)}/gallery/{name}"
    return urls, to_write


def _galleries_html(galleries: list[Gallery], urls: Mapping[tuple[str, int], str], rows: Mapping[str, int]) -> str:
    if not galleries:
        return "<p class=muted>No galleries.</p>"
    parts = []
    for g in galleries:
        parts.append(f"<h3>{html.escape(g.title)}</h3>")
        if not g.items:
            parts.append("<p class=muted>No sample with this error.</p>")
            continue
        parts.append(f'<div class=gallery id="gallery-{html.escape(g.kind)}">')
        for k, it in enumerate(g.items):
            row = rows.get(it.sample_id)
            attrs = f' class=clickable data-row="{row}"' if row is not None else ""
            parts.append(f'<figure{attrs}><img loading=lazy src="{html.escape(urls[(g.kind, k)])}" '
                         f'alt="{html.escape(it.sample_id)}"><figcaption>{html.escape(it.caption)}</figcaption></figure>')
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
                 provenance: Mapping[str, Any] | None = None, *, layers: Any = None,
                 title: str = "ARMBench segmentation analysis", file_name: str = "dashboard.html",
                 max_thumbnails: int = DEFAULT_MAX_THUMBNAILS, max_views: int = DEFAULT_MAX_VIEWS,
                 seed: int = 0) -> Path:
    """Write the offline dashboard (the page and its ``assets/`` folder) and return its path.

    Args:
        out_dir: folder (created); the page is ``out_dir/file_name``, its files under
            ``out_dir/assets/`` (see the module docstring).
        frame: one row per sample (``sample_id``, ``split``, metrics, ``unc_*``, ``meta_*``;
            an optional ``cluster`` column, else ``clusters.labels`` is used).
        map_xy: (n, 2) map coordinates aligned with ``frame`` (or a ``Projection``).
        clusters: ``clustering.ClusterResult`` or None.
        label_picks: ``selection.LabelingResult`` or None.
        prune_result: ``selection.PruneResult`` or None.
        galleries: list (or dict) of :class:`Gallery`.
        thumbnails: ``{sample_id: bytes}`` or ``provider(sample_id) -> RGB image | bytes`` or None.
        provenance: run description shown at the bottom (model hash, settings, ...); absolute
            paths in it are shown relative to the run folder / ``~`` (see :func:`scrub_paths`).
        layers: ``provider(sample_id) -> SampleLayers`` for the larger views, or None.
        max_thumbnails / max_views: how many samples get a thumbnail / a larger view (picks
            and gallery samples first); a run with more samples gets a note on the page.
    """
    xy = np.asarray(getattr(map_xy, "xy", map_xy), dtype=np.float64)
    if xy.shape != (len(frame), 2):
        raise ValueError(f"map_xy must have shape ({len(frame)}, 2) aligned with the frame, got {xy.shape}")
    from armbench_segmentation.analysis.clustering import with_prefixes
    from armbench_segmentation.codecs import atomic_write_text

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = Path(file_name).stem
    frame = with_prefixes(frame.reset_index(drop=True), rename=True).copy()
    if "cluster" not in frame.columns and clusters is not None and len(getattr(clusters, "labels", [])) == len(frame):
        frame["cluster"] = np.asarray(clusters.labels)
    insights = {s.cluster_id: s.insight for s in getattr(clusters, "summaries", None) or []}
    gallery_list = _gallery_list(galleries)
    priority = []  # who gets images first: the galleries' worst samples, then the labeling picks
    for g in gallery_list:
        priority += [it.sample_id for it in g.items]
    if label_picks is not None:
        priority += label_picks.picks["sample_id"].astype(str).tolist()
    rows: dict[str, int] = {}
    for i, sid in enumerate(frame["sample_id"].astype(str) if "sample_id" in frame.columns else []):
        rows.setdefault(sid, i)
    gallery_urls, gallery_copies = _gallery_urls(gallery_list, stem)
    plotly_js = _copy_plotly(out / ASSETS_DIR)
    assets = _write_assets(out, stem, frame, thumbnails, layers, priority, max_thumbnails, max_views, seed,
                           extra=gallery_copies)
    payload = _map_payload(frame, xy, assets, insights)

    counts = pd.Series(payload["split"]).map(dict(enumerate(payload["splits"]))).value_counts().to_dict()
    summary = ", ".join(f"{v} {k}" for k, v in counts.items())
    prov = dict(provenance or {})
    if label_picks is not None:
        prov.setdefault("labeling", label_picks.provenance)
    if prune_result is not None:
        prov.setdefault("pruning", prune_result.provenance)
    prov = scrub_paths(json.loads(json.dumps(prov, default=json_default)), out)
    page = _asset("page.html").format(
        title=html.escape(title), summary=html.escape(summary or "no samples"),
        plotly_src=html.escape(f"{ASSETS_DIR}/{plotly_js.name}"), data=script_json(payload),
        scale_note=_scale_note(len(frame), assets.notes),
        clusters=_clusters_html(clusters), picks=_picks_html(label_picks, assets, rows),
        prune=_prune_html(prune_result), galleries=_galleries_html(gallery_list, gallery_urls, rows),
        provenance=html.escape(json.dumps(prov, indent=2, ensure_ascii=False)),
        css=_asset("style.css"), map_js=_asset("map.js"), js=_asset("app.js"),
    )
    path = out / file_name
    atomic_write_text(path, page)
    logger.info("dashboard written to %s (%.2f MB, its assets in %s)", path, path.stat().st_size / 1e6,
                out / ASSETS_DIR)
    return path


def _scale_note(n: int, notes: Sequence[str]) -> str:
    if not notes:
        return ""
    items = "".join(f"<li>{html.escape(n_)}</li>" for n_ in notes)
    return (f'<div id="scale-note" class="note"><b>This run has {n} samples; this page embeds images for part of '
            f"them.</b><ul>{items}</ul>To see every sample (its image with GT and prediction overlays, each error "
            "kind, selections and exports), open the run in the local app: in a terminal in the folder that holds "
            "this page, run <code>armbench serve .</code> (or <code>armbench serve RUN_DIR</code>).</div>")
