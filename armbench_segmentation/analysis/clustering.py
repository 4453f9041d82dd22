"""Clusters of the population and a one-line "insight" for each.

Clustering runs on standardized embeddings reduced to at most 50 principal components
(see :func:`projection.reduce_embeddings`), with a method from the :data:`CLUSTERERS`
registry: ``kmeans`` (default, scikit-learn, few restarts) or ``hdbscan`` (scikit-learn's
density-based HDBSCAN; its noise points get cluster id -1).

Each cluster is then described against the rest of the population: size, split mix, mean
loss, over/under-segmentation rates, mean uncertainty, and the metadata fields that most
separate it from the rest, ranked by effect size:

- numeric fields: standardized mean difference (Cohen's d with the pooled standard deviation);
- categorical fields (strings, booleans; at most 20 distinct values): Cohen's h between the
  share of the most over-represented value inside and outside the cluster.

Both are on the same scale (|0.2| small, |0.5| medium, |0.8| large), so they rank together.
The insight string reads like
``"high loss (0.42 vs 0.18): dense totes (n_objects 28 vs 11), blue tote (90% vs 48%)"``.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import pandas as pd

from armbench_segmentation.analysis.projection import check_embeddings, fit_rows, reduce_embeddings

logger = logging.getLogger(__name__)

NOISE = -1
MIN_EFFECT = 0.5  # |d| or |h| below this is not mentioned in an insight
MAX_CATEGORIES = 20

# Phrases for well-known metadata fields: (phrase when higher, phrase when lower).
FIELD_PHRASES: dict[str, tuple[str, str]] = {
    "meta_n_objects": ("dense totes", "sparse totes"),
    "meta_small_share": ("many small objects", "few small objects"),
    "meta_brightness": ("bright images", "dark images"),
    "meta_occluded_share": ("heavy occlusion", "little occlusion"),
    "meta_clutter": ("cluttered totes", "tidy totes"),
}
FIELD_PHRASES.update({
    "meta_small_object_share": FIELD_PHRASES["meta_small_share"],
    "meta_occluded_object_share": FIELD_PHRASES["meta_occluded_share"],
    "meta_small_object_count": FIELD_PHRASES["meta_small_share"],
})
CATEGORY_PHRASES: dict[str, str] = {"meta_tote_color": "{value} tote"}

# Field names as the core writes them (metrics/uncertainty.py, metadata.py). The analysis
# contract is ``unc_<name>`` / ``meta_<name>``; :func:`with_prefixes` adds those names to a
# frame that carries the bare ones.
UNCERTAINTY_FIELDS = ("score_entropy", "mask_entropy", "least_confidence", "margin", "overlap_margin",
                      "contested_fraction", "low_conf_count")
METADATA_FIELDS = (
    "n_annotations", "n_instances", "n_objects", "n_totes", "n_crowd", "object_area_mean", "object_area_std",
    "object_area_min", "object_area_max", "small_object_count", "small_object_share", "occluded_object_count",
    "occluded_object_share", "mean_box_overlaps", "max_box_overlaps", "mean_visible_fraction",
    "min_visible_fraction", "multi_polygon_objects", "tote_area_share", "background_share", "tote_color",
    "tote_hue", "brightness", "contrast", "sharpness", "colorfulness", "aspect_ratio",
)


def with_prefixes(frame: pd.DataFrame, rename: bool = False) -> pd.DataFrame:
    """The frame with ``unc_*`` / ``meta_*`` names for bare uncertainty and metadata columns.

    A bare column ``mask_entropy`` (or ``uncertainty_mask_entropy``) is exposed as
    ``unc_mask_entropy`` unless that name exists; ``n_objects`` as ``meta_n_objects``. With
    ``rename=False`` the prefixed names are added beside the bare ones (a new frame; the
    caller's frame is not modified); ``rename=True`` renames instead (no duplicate columns).
    """
    mapping: dict[str, str] = {}
    for name in UNCERTAINTY_FIELDS:
        target = f"unc_{name}"
        if target in frame.columns:
            continue
        for src in (name, f"uncertainty_{name}"):
            if src in frame.columns:
                mapping[src] = target
                break
    for name in METADATA_FIELDS:
        if f"meta_{name}" not in frame.columns and name in frame.columns:
            mapping[name] = f"meta_{name}"
    if not mapping:
        return frame
    if rename:
        return frame.rename(columns=mapping)
    return frame.assign(**{dst: frame[src] for src, dst in mapping.items()})


# --------------------------------------------------------------------------------------
# Result types
# --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class FieldContrast:
    """How one metadata field differs inside a cluster vs the rest."""

    field: str
    kind: str  # "numeric" | "categorical"
    effect: float  # Cohen's d (numeric) or h (categorical); sign: + = more inside the cluster
    inside: float  # mean (numeric) or share of ``value`` (categorical) in the cluster
    outside: float  # same for the rest of the population
    value: str | None = None  # the over/under-represented category

    def phrase(self) -> str:
        name = _short(self.field)
        if self.kind == "categorical":
            template = CATEGORY_PHRASES.get(self.field, f"{name}={{value}}")
            label = template.format(value=self.value)
            return f"{label} ({self.inside:.0%} vs {self.outside:.0%})"
        high, low = FIELD_PHRASES.get(self.field, (f"high {name}", f"low {name}"))
        label = high if self.effect > 0 else low
        return f"{label} ({name} {_fmt(self.inside)} vs {_fmt(self.outside)})"


@dataclass(frozen=True)
class ClusterSummary:
    cluster_id: int
    size: int
    split_counts: dict[str, int]
    mean_loss: float | None
    rest_mean_loss: float | None
    over_rate: float | None  # share of labeled members with over_segmented == 1
    under_rate: float | None
    mean_uncertainty: dict[str, float]  # unc_* column -> mean (finite values only)
    contrasts: tuple[FieldContrast, ...]  # strongest first, |effect| >= MIN_EFFECT
    insight: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "cluster_id": self.cluster_id, "size": self.size, "split_counts": dict(self.split_counts),
            "mean_loss": self.mean_loss, "rest_mean_loss": self.rest_mean_loss,
            "over_rate": self.over_rate, "under_rate": self.under_rate,
            "mean_uncertainty": dict(self.mean_uncertainty), "insight": self.insight,
            "contrasts": [c.__dict__ for c in self.contrasts],
        }


@dataclass(frozen=True)
class ClusterResult:
    labels: np.ndarray  # (n,) int64, -1 = noise (hdbscan only)
    summaries: list[ClusterSummary]
    method: str = "kmeans"
    params: dict[str, Any] = field(default_factory=dict)

    def summary(self, cluster_id: int) -> ClusterSummary:
        for s in self.summaries:
            if s.cluster_id == cluster_id:
                return s
        raise KeyError(f"no cluster {cluster_id}; clusters: {[s.cluster_id for s in self.summaries]}")

    def table(self) -> pd.DataFrame:
        """One row per cluster (for CSV export and the dashboard)."""
        rows = []
        for s in self.summaries:
            row = {"cluster": s.cluster_id, "size": s.size, "mean_loss": s.mean_loss,
                   "over_rate": s.over_rate, "under_rate": s.under_rate, "insight": s.insight}
            row.update({f"n_{k}": v for k, v in s.split_counts.items()})
            rows.append(row)
        return pd.DataFrame(rows, columns=None if rows else ["cluster", "size", "mean_loss", "over_rate",
                                                              "under_rate", "insight"])


# --------------------------------------------------------------------------------------
# Registry of clusterers
# --------------------------------------------------------------------------------------

Clusterer = Callable[[np.ndarray, int, int, dict], np.ndarray]  # (z, n_clusters, seed, params) -> labels


def _kmeans(z: np.ndarray, n_clusters: int, seed: int, params: dict) -> np.ndarray:
    from sklearn.cluster import KMeans

    k = max(1, min(n_clusters, len(z)))
    max_fit = int(params.get("max_fit", 50_000))
    rng = np.random.default_rng(seed)
    idx = fit_rows(np.ones(len(z), bool), max_fit, rng)
    km = KMeans(n_clusters=k, n_init=int(params.get("n_init", 3)), random_state=seed).fit(z[idx])
    return km.predict(z)


def _hdbscan(z: np.ndarray, n_clusters: int, seed: int, params: dict) -> np.ndarray:
    from sklearn.cluster import HDBSCAN

    dims = int(params.get("dims", 10))  # density estimates degrade in high dimension
    zz = z[:, :dims]
    min_size = int(params.get("min_cluster_size", max(5, len(z) // 100)))
    return HDBSCAN(min_cluster_size=min(min_size, max(2, len(z))), min_samples=params.get("min_samples"), copy=True).fit_predict(zz)


CLUSTERERS: dict[str, Clusterer] = {"kmeans": _kmeans, "hdbscan": _hdbscan}


def get_clusterer(name: str) -> Clusterer:
    key = str(name).strip().lower()
    if key not in CLUSTERERS:
        raise ValueError(f"unknown clustering method {name!r}; valid: {sorted(CLUSTERERS)}")
    return CLUSTERERS[key]


# --------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------

def cluster(frame: pd.DataFrame, embeddings: Any, method: str = "kmeans", n_clusters: int = 8, seed: int = 0,
            reduce_dims: int = 50, params: dict | None = None) -> ClusterResult:
    """Cluster the samples and summarise every cluster.

    Args:
        frame: per-sample results, one row per embedding row.
        embeddings: (n, D) float.
        method: ``kmeans`` or ``hdbscan`` (see :data:`CLUSTERERS`).
        n_clusters: k for k-means (capped at n); ignored by hdbscan.
        reduce_dims: PCA width used before clustering.
        params: method options (kmeans: ``n_init``, ``max_fit``; hdbscan: ``min_cluster_size``,
            ``min_samples``, ``dims``).
    Returns:
        :class:`ClusterResult` with labels (n,) int64 and one summary per cluster (largest first).
    """
    if n_clusters < 1:
        raise ValueError(f"n_clusters must be >= 1, got {n_clusters}")
    fn = get_clusterer(method)
    emb = check_embeddings(embeddings, len(frame))
    params = dict(params or {})
    if len(frame) == 0:
        return ClusterResult(np.zeros(0, np.int64), [], method, {"n_clusters": n_clusters, **params})
    z = reduce_embeddings(emb, n_components=reduce_dims, seed=seed)
    labels = np.asarray(fn(z, n_clusters, seed, params), dtype=np.int64)
    summaries = summarize_clusters(frame, labels)
    return ClusterResult(labels, summaries, method.strip().lower(),
                         {"n_clusters": n_clusters, "seed": seed, "reduce_dims": reduce_dims, **params})


def summarize_clusters(frame: pd.DataFrame, labels: np.ndarray) -> list[ClusterSummary]:
    """One :class:`ClusterSummary` per distinct label, largest cluster first (noise last)."""
    labels = np.asarray(labels)
    if len(labels) != len(frame):
        raise ValueError(f"labels have {len(labels)} entries but the frame has {len(frame)} rows")
    frame = with_prefixes(frame.reset_index(drop=True))
    loss = _numeric(frame, "loss")
    over = _numeric(frame, "over_segmented")
    under = _numeric(frame, "under_segmented")
    unc_cols = [c for c in frame.columns if str(c).startswith("unc_")]
    numeric_fields, categorical_fields = _metadata_fields(frame)
    ids, counts = np.unique(labels, return_counts=True)
    order = sorted(range(len(ids)), key=lambda i: (ids[i] == NOISE, -counts[i], ids[i]))
    out = []
    for i in order:
        cid = int(ids[i])
        inside = labels == cid
        split_counts = ({str(k): int(v) for k, v in frame.loc[inside, "split"].astype(str).value_counts().items()}
                        if "split" in frame else {})
        mean_loss, rest_loss = _mean(loss, inside), _mean(loss, ~inside)
        over_rate, under_rate = _mean(over, inside), _mean(under, inside)
        mean_unc = {}
        for c in unc_cols:
            m = _mean(_numeric(frame, c), inside)
            if m is not None:
                mean_unc[c] = m
        contrasts = []
        for c in numeric_fields:
            fc = _numeric_contrast(c, _numeric(frame, c), inside)
            if fc is not None:
                contrasts.append(fc)
        for c in categorical_fields:
            fc = _categorical_contrast(c, frame[c], inside)
            if fc is not None:
                contrasts.append(fc)
        contrasts.sort(key=lambda fc: -abs(fc.effect))
        strong = tuple(fc for fc in contrasts if abs(fc.effect) >= MIN_EFFECT)
        insight = _insight(cid, inside, loss, over, under, strong)
        out.append(ClusterSummary(cid, int(inside.sum()), split_counts, mean_loss, rest_loss, over_rate,
                                  under_rate, mean_unc, strong, insight))
    return out


# --------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------

def _numeric(frame: pd.DataFrame, column: str) -> np.ndarray:
    """(n,) float64 with NaN for missing / non-numeric values; all-NaN when the column is absent."""
    if column not in frame.columns:
        return np.full(len(frame), np.nan)
    return pd.to_numeric(frame[column], errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)


def _mean(values: np.ndarray, mask: np.ndarray) -> float | None:
    v = values[mask]
    v = v[np.isfinite(v)]
    return float(v.mean()) if v.size else None


def _metadata_fields(frame: pd.DataFrame) -> tuple[list[str], list[str]]:
    numeric, categorical = [], []
    for c in frame.columns:
        if not str(c).startswith("meta_"):
            continue
        s = frame[c]
        if pd.api.types.is_bool_dtype(s):
            categorical.append(c)
        elif pd.api.types.is_numeric_dtype(s):
            numeric.append(c)
        else:
            non_null = s.dropna()
            if non_null.map(lambda v: isinstance(v, (bool, np.bool_))).all() and len(non_null):
                categorical.append(c)
            elif pd.to_numeric(non_null, errors="coerce").notna().all() and len(non_null):
                numeric.append(c)
            elif non_null.astype(str).nunique() <= MAX_CATEGORIES:
                categorical.append(c)
    return numeric, categorical


def _numeric_contrast(name: str, values: np.ndarray, inside: np.ndarray) -> FieldContrast | None:
    a, b = values[inside], values[~inside]
    a, b = a[np.isfinite(a)], b[np.isfinite(b)]
    if a.size < 2 or b.size < 2:
        return None
    pooled = math.sqrt(((a.size - 1) * a.var(ddof=1) + (b.size - 1) * b.var(ddof=1)) / (a.size + b.size - 2))
    diff = float(a.mean() - b.mean())
    if pooled <= 1e-12:
        if abs(diff) <= 1e-12:
            return None
        effect = math.copysign(10.0, diff)  # constant inside and outside, different values: maximal
    else:
        effect = diff / pooled
    return FieldContrast(name, "numeric", float(effect), float(a.mean()), float(b.mean()))


def _categorical_contrast(name: str, series: pd.Series, inside: np.ndarray) -> FieldContrast | None:
    valid = series.notna().to_numpy()
    a_mask, b_mask = inside & valid, ~inside & valid
    if a_mask.sum() == 0 or b_mask.sum() == 0:
        return None
    values = series.astype(str).to_numpy()
    best = None
    for v in np.unique(values[valid]):
        pa = float((values[a_mask] == v).mean())
        pb = float((values[b_mask] == v).mean())
        h = 2 * math.asin(math.sqrt(pa)) - 2 * math.asin(math.sqrt(pb))
        if best is None or h > best.effect:  # over-representation only (under-rep is the other value's over-rep)
            best = FieldContrast(name, "categorical", h, pa, pb, value=str(v))
    return best if best is not None and best.effect > 0 else None


def _insight(cid: int, inside: np.ndarray, loss: np.ndarray, over: np.ndarray, under: np.ndarray,
             contrasts: tuple[FieldContrast, ...], max_fields: int = 3) -> str:
    head = []
    loss_c = _numeric_contrast("loss", loss, inside)
    if loss_c is not None:
        level = "high" if loss_c.effect >= MIN_EFFECT else "low" if loss_c.effect <= -MIN_EFFECT else "typical"
        head.append(f"{level} loss ({loss_c.inside:.2f} vs {loss_c.outside:.2f})")
    elif np.isfinite(loss[inside]).sum() == 0 and np.isfinite(loss).any():
        head.append("unlabeled only (no loss)")
    for name, values in (("over-segmented", over), ("under-segmented", under)):
        c = _numeric_contrast(name, values, inside)
        if c is not None and c.effect >= MIN_EFFECT:
            head.append(f"{name} {c.inside:.0%} vs {c.outside:.0%}")
    tail = [fc.phrase() for fc in contrasts[:max_fields]]
    text = ", ".join(head) if head else f"cluster {cid}"
    if tail:
        text += ": " + ", ".join(tail)
    elif head:
        text += ": no metadata field stands out"
    return text


def _short(name: str) -> str:
    return name[5:] if name.startswith("meta_") else name


def _fmt(v: float) -> str:
    if abs(v) >= 100 or (abs(v) >= 10 and float(v).is_integer()):
        return f"{v:.0f}"
    if abs(v) >= 10:
        return f"{v:.1f}"
    return f"{v:.2g}" if abs(v) < 1 else f"{v:.3g}"
