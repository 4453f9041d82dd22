"""Decisions: which unlabeled images to send to annotators, which training images to prune.

Labeling picks (:func:`select_for_labeling`), strategies in :data:`LABEL_STRATEGIES`:

- ``entropy`` / ``margin`` / ``least_confidence`` / ``count``: rank the unlabeled samples by one
  uncertainty column (``unc_mask_entropy`` else ``unc_score_entropy``; ``unc_margin``;
  ``unc_least_confidence``; ``unc_low_conf_count``). Every ``unc_*`` column is read as
  "higher = more uncertain"; a missing value ranks last.
- ``loss_neighbourhood``: unlabeled samples whose k nearest *labeled* neighbours in latent
  space have a high loss (the model fails around there).
- ``diversity``: k-center greedy core-set (Sener & Savarese 2018) seeded by the labeled set:
  repeatedly pick the unlabeled sample farthest from every labeled sample and earlier pick.
- ``combined`` (default): uncertainty first, then diversity. Each uncertainty column
  (``unc_*`` with direction "worse" in ``analysis.columns``; descriptive counts such as
  ``unc_num_detections`` are left out) is turned into a percentile rank and weighted by how
  well it tracks this model's real errors on the run's own labeled samples (Spearman
  correlation with ``error_rate``, else ``loss``, on the val split when it has >= 8 such
  samples, else on train + val; negative -> 0; equal weights with fewer than 8). The ``pool_factor * budget`` most uncertain candidates (at most a
  quarter of the candidates, never fewer than the budget) are then spread out by
  uncertainty-weighted k-center greedy seeded by the labeled set: each step takes the largest
  uncertainty x distance to the labeled data and earlier picks, so the batch is uncertain *and*
  not redundant, and a compact hard sub-population is not covered by a single pick. (BADGE
  needs last-layer gradients, which an ONNX export does not give; this is the gradient-free
  analogue.) Without any ``unc_*`` column it falls back to ``diversity`` and says so in the
  provenance.

Latent distances use standardized embeddings reduced to <= 50 principal components.

Pruning picks (:func:`select_for_pruning`) for the train split, per cluster:
distance to the cluster centroid (cosine, on L2-normalized reduced embeddings), SemDeDup-like
near-duplicate detection (cosine similarity above ``dedup_threshold``; the sample farther
from the centroid is kept), sub-groups inside large clusters (a small k-means), and
coverage-centric stratified sampling (Zheng et al., ICLR 2023): equal-width distance bands x
sub-groups form strata, the keep budget is water-filled across strata so every stratum keeps
something before dense ones keep more. Near-duplicates are dropped first. Within a stratum,
``prefer`` picks which samples stay: ``"balanced"`` (random), ``"hard"`` (far from the
centroid first; Sorscher et al. 2022 for plentiful data) or ``"easy"`` (near first; scarce data).

Exports write into an output folder: ranked CSVs, the picked images with the model's
predictions as polygon pre-annotations for CVAT (COCO) and Label Studio (tasks + labeling
config; ``analysis.labeling``), optional crops, keep/drop CSVs and a pruned copy of the
original ``train.json``. Every score follows its rank (never higher at a later rank) and
distance bands are numbered 1 (nearest the centroid) to ``n_bands`` in every file.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import pandas as pd

from armbench_segmentation import package_version
from armbench_segmentation.analysis.clustering import _numeric
from armbench_segmentation.analysis.exports import write_csv
from armbench_segmentation.analysis.labeling import DEFAULT_CATEGORIES
from armbench_segmentation.analysis.projection import (
    check_embeddings, embeddings_digest, fit_rows, labeled_mask, reduce_embeddings,
)
from armbench_segmentation.codecs import atomic_write_text, json_default
from armbench_segmentation.splits import UNLABELED
from armbench_segmentation.structures import python_scalar

logger = logging.getLogger(__name__)

# Strategy -> uncertainty columns tried in order (first present one is the score).
UNCERTAINTY_COLUMNS: dict[str, tuple[str, ...]] = {
    "entropy": ("unc_mask_entropy", "unc_score_entropy"),
    "margin": ("unc_margin",),
    "least_confidence": ("unc_least_confidence",),
    "count": ("unc_low_conf_count",),
}
READABLE = {
    "unc_mask_entropy": "mask entropy", "unc_score_entropy": "score entropy", "unc_margin": "margin uncertainty",
    "unc_least_confidence": "least confidence", "unc_low_conf_count": "low-confidence detections",
    "unc_contested_fraction": "contested pixel share", "unc_overlap_margin": "overlap margin",
}


# --------------------------------------------------------------------------------------
# Shared pieces
# --------------------------------------------------------------------------------------

def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")




def _top_share(values: np.ndarray) -> np.ndarray:
    """For each value, the share of (finite) values >= it: 0.03 = "top 3%". NaN -> 1."""
    v = np.where(np.isfinite(values), values, -np.inf)
    order = np.sort(v)
    n_ge = len(v) - np.searchsorted(order, v, side="left")
    share = n_ge / max(len(v), 1)
    return np.where(np.isfinite(values), share, 1.0)


def _percentile_rank(values: np.ndarray) -> np.ndarray:
    """(n,) in [0, 1], 1 = most uncertain; NaN -> 0."""
    return np.where(np.isfinite(values), 1.0 - _top_share(values) + 1.0 / max(len(values), 1), 0.0)


def _pct(share: float) -> str:
    p = 100 * share
    return f"top {p:.0f}%" if p >= 1 else f"top {p:.1f}%"


def _fmt(v: float) -> str:
    return f"{v:.0f}" if float(v).is_integer() and abs(v) >= 1 else f"{v:.3g}"


class _Context:
    """Lazily computed views of the data shared by the strategies."""

    def __init__(self, frame: pd.DataFrame, embeddings: np.ndarray, seed: int, reduce_dims: int):
        self.frame = frame
        self.emb = embeddings
        self.seed = seed
        self.reduce_dims = reduce_dims
        split = frame["split"].astype(str).to_numpy() if "split" in frame.columns else np.full(len(frame), UNLABELED)
        self.candidates = np.flatnonzero(split == UNLABELED)  # row indices of unlabeled samples
        self.labeled = np.flatnonzero(labeled_mask(frame, len(frame)) & (split != UNLABELED))
        self._z: np.ndarray | None = None
        self._d0: np.ndarray | None = None

    @property
    def z(self) -> np.ndarray:
        """(n, d) standardized, reduced embeddings (fit on labeled + unlabeled alike)."""
        if self._z is None:
            rng = np.random.default_rng(self.seed)
            idx = fit_rows(np.ones(len(self.emb), bool), 20_000, rng)
            self._z = reduce_embeddings(self.emb, idx, self.reduce_dims, self.seed)
        return self._z

    @property
    def dist_to_labeled(self) -> np.ndarray:
        """(n_candidates,) distance of each candidate to its nearest labeled sample (inf if none)."""
        if self._d0 is None:
            if len(self.labeled) == 0:
                self._d0 = np.full(len(self.candidates), np.inf)
            else:
                from sklearn.neighbors import NearestNeighbors

                nn = NearestNeighbors(n_neighbors=1).fit(self.z[self.labeled])
                self._d0 = nn.kneighbors(self.z[self.candidates])[0][:, 0]
        return self._d0

    def median_distance(self) -> float:
        d = self.dist_to_labeled
        d = d[np.isfinite(d)]
        return float(np.median(d)) if d.size and np.median(d) > 0 else 1.0

    def uncertainty(self, column: str) -> np.ndarray:
        return _numeric(self.frame, column)[self.candidates]

    def unc_columns(self) -> list[str]:
        return [c for c in self.frame.columns if str(c).startswith("unc_")
                and np.isfinite(_numeric(self.frame, c)[self.candidates]).any()]


@dataclass(frozen=True)
class _Picks:
    positions: np.ndarray  # (k,) positions into ctx.candidates, in rank order
    scores: np.ndarray  # (k,) float
    reasons: list[str]
    extra: dict[str, np.ndarray] = field(default_factory=dict)  # per-pick columns
    notes: tuple[str, ...] = ()


def _distance_phrase(ratio: float) -> str:
    if not np.isfinite(ratio):
        return "no labeled data to compare with"
    if ratio >= 1.5:
        return f"far from labeled data (distance {ratio:.1f}x median)"
    return f"distance to labeled data {ratio:.1f}x median"


def _unc_phrase(ctx: _Context, column: str, positions: np.ndarray) -> list[str]:
    values = ctx.uncertainty(column)
    share = _top_share(values)
    name = READABLE.get(column, column[4:] if column.startswith("unc_") else column)
    return [f"{name} {_fmt(values[p])} ({_pct(share[p])})" if np.isfinite(values[p]) else f"{name} missing"
            for p in positions]


# --------------------------------------------------------------------------------------
# Strategies
# --------------------------------------------------------------------------------------

def _column_for(ctx: _Context, strategy: str) -> str:
    options = UNCERTAINTY_COLUMNS[strategy]
    for c in options:
        if c in ctx.frame.columns and np.isfinite(ctx.uncertainty(c)).any():
            return c
    raise ValueError(f"label strategy {strategy!r} needs one of the columns {list(options)} with values for "
                     f"the unlabeled samples; the frame has uncertainty columns {ctx.unc_columns() or 'none'}. "
                     "Use --label-strategy diversity (embeddings only) or loss_neighbourhood instead.")


def _uncertainty_strategy(strategy: str) -> Callable[[_Context, int, dict], _Picks]:
    def run(ctx: _Context, budget: int, params: dict) -> _Picks:
        column = _column_for(ctx, strategy)
        values = ctx.uncertainty(column)
        key = np.where(np.isfinite(values), values, -np.inf)
        tie = np.zeros(len(values))
        if strategy == "count":  # many ties: break them by entropy when available
            for c in UNCERTAINTY_COLUMNS["entropy"]:
                if c in ctx.frame.columns:
                    t = ctx.uncertainty(c)
                    tie = np.where(np.isfinite(t), t, -np.inf)
                    break
        order = np.lexsort((np.arange(len(values)), -tie, -key))[:budget]  # stable: key desc, tie desc, index
        reasons = _unc_phrase(ctx, column, order)
        return _Picks(order, values[order], reasons,  # a missing value ranks last with no score
                      {"uncertainty": values[order]}, (f"score = {column}",))

    run.__name__ = f"_{strategy}"
    return run


def _loss_neighbourhood(ctx: _Context, budget: int, params: dict) -> _Picks:
    from sklearn.neighbors import NearestNeighbors

    k_req = int(params.get("k", 10))
    loss_all = _numeric(ctx.frame, "loss")
    ref = ctx.labeled[np.isfinite(loss_all[ctx.labeled])]
    if len(ref) == 0:
        raise ValueError("label strategy 'loss_neighbourhood' needs labeled samples (train/val) with a finite "
                         "'loss'; none were found. Use --label-strategy diversity or entropy instead.")
    k = min(k_req, len(ref))
    nn = NearestNeighbors(n_neighbors=k).fit(ctx.z[ref])
    _, nbr = nn.kneighbors(ctx.z[ctx.candidates])  # (n_candidates, k) positions into ref
    nbr_loss = loss_all[ref][nbr]  # (n_candidates, k)
    score = nbr_loss.mean(axis=1)
    order = np.lexsort((np.arange(len(score)), -score))[:budget]
    median_loss = float(np.median(loss_all[ref]))
    flags = {name: _numeric(ctx.frame, col)[ref][nbr] for name, col in
             (("over-segmented", "over_segmented"), ("under-segmented", "under_segmented"))}
    reasons = []
    for p in order:
        text = f"its {k} nearest labeled neighbours have mean loss {score[p]:.2f} (labeled median {median_loss:.2f})"
        for name, f in flags.items():
            cnt = int(np.nansum(f[p] > 0))
            if cnt >= max(2, k // 3):
                text += f"; {cnt}/{k} {name}"
        reasons.append(text)
    return _Picks(order, score[order], reasons, {"neighbour_loss": score[order]}, (f"k={k}",))


def k_center_greedy(points: np.ndarray, budget: int, seeds: np.ndarray | None = None,
                    initial_distance: np.ndarray | None = None,
                    weights: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Greedy core-set: repeatedly take the point farthest from the seeds and earlier picks.

    Args:
        points: (n, d) candidate points.
        budget: how many to pick (capped at n).
        seeds: (m, d) already-covered points (e.g. the labeled set); may be empty.
        initial_distance: (n,) precomputed distance of each point to its nearest seed
            (overrides ``seeds``).
        weights: (n,) >= 0; when given, each step takes the largest ``weight * distance``
            (uncertainty-weighted coverage) instead of the largest distance.
    Returns:
        ``(order (k,) int64 indices into points, distance (k,) at the moment each was picked)``.
        Without seeds the first pick is the point farthest from the candidates' mean (with
        ``weights``: the largest weight). The criterion of each pick (distance, or weight x
        distance) never increases along the order: every point's distance only shrinks.
    """
    points = np.asarray(points, dtype=np.float64)
    n = len(points)
    budget = int(min(budget, n))
    if budget <= 0:
        return np.zeros(0, np.int64), np.zeros(0)
    if initial_distance is not None:
        min_d = np.asarray(initial_distance, dtype=np.float64).copy()
    elif seeds is not None and len(seeds):
        from sklearn.neighbors import NearestNeighbors

        min_d = NearestNeighbors(n_neighbors=1).fit(np.asarray(seeds, np.float64)).kneighbors(points)[0][:, 0]
    else:
        min_d = np.full(n, np.inf)
    w = None if weights is None else np.clip(np.asarray(weights, np.float64), 0.0, None)
    order = np.empty(budget, np.int64)
    picked_d = np.empty(budget)
    taken = np.zeros(n, bool)
    for i in range(budget):
        if np.isinf(min_d[~taken]).all():
            if w is not None:
                j = int(np.argmax(np.where(taken, -1.0, w)))
            else:
                j = int(np.argmax(np.where(taken, -1.0, ((points - points.mean(axis=0)) ** 2).sum(axis=1))))
        else:
            crit = min_d if w is None else np.where(np.isinf(min_d), np.inf, w * min_d)
            j = int(np.argmax(np.where(taken, -1.0, crit)))
        order[i], picked_d[i] = j, min_d[j]
        taken[j] = True
        d = np.sqrt(((points - points[j]) ** 2).sum(axis=1))  # (n,)
        np.minimum(min_d, d, out=min_d)
    return order, picked_d


def _diversity(ctx: _Context, budget: int, params: dict) -> _Picks:
    z = ctx.z[ctx.candidates]
    order, dist = k_center_greedy(z, budget, initial_distance=ctx.dist_to_labeled)
    med = ctx.median_distance()
    ratio = np.where(np.isfinite(dist), dist / med, np.nan)
    d0 = ctx.dist_to_labeled[order] / med
    reasons = []
    for r, r0 in zip(ratio, d0):
        text = _distance_phrase(r0)
        if np.isfinite(r) and np.isfinite(r0) and r < 0.8 * r0:
            text += f"; {r:.1f}x median from the nearest earlier pick"
        reasons.append(text)
    return _Picks(order, _greedy_score(dist / med), reasons, {"distance_ratio": d0},
                  ("score = distance to labeled data and earlier picks / median distance to labeled data "
                   "(the k-center greedy order)",))


def _greedy_score(ratio: np.ndarray) -> np.ndarray:
    """k-center greedy's own criterion as the score: the distance of each pick, when it was
    picked, to the labeled data and the earlier picks (non-increasing along the order). A pick
    made with nothing to measure from (no labeled data: infinite distance) ties with the
    largest finite one (1.0 when there is none), so the score never contradicts the rank."""
    r = np.asarray(ratio, np.float64)
    finite = r[np.isfinite(r)]
    top = float(finite.max()) if finite.size else 1.0
    return np.where(np.isinf(r), top, r)


# Labeled-sample error columns the combined strategy calibrates its uncertainty against,
# in order of preference (error_rate does not grow with the number of objects; loss does).
CALIBRATION_TARGETS = ("error_rate", "loss")
MIN_CALIBRATION_ROWS = 8


def _uncertainty_signals(ctx: _Context) -> list[str]:
    """The ``unc_*`` columns that are uncertainty ("higher = worse"): the documented
    descriptive ones (e.g. ``unc_num_detections``, a count) are left out; unknown
    ``unc_*`` columns are taken at their word."""
    from armbench_segmentation.analysis.columns import describe

    out = []
    for c in ctx.unc_columns():
        col = describe(c)
        if col is None or col.direction == "worse":
            out.append(c)
    return out


def _calibrated_weights(ctx: _Context, cols: list[str]) -> tuple[dict[str, float], str]:
    """How much each uncertainty column tells about this model's real errors, measured on the
    labeled samples of the same run: Spearman correlation with ``error_rate`` (else ``loss``),
    negative ones set to 0. The val split is used when it has :data:`MIN_CALIBRATION_ROWS`
    samples with a value (images the model was not trained on, like the unlabeled ones),
    else every labeled sample. Equal weights, said in the note, when fewer than
    :data:`MIN_CALIBRATION_ROWS` labeled samples have both values or nothing correlates."""
    split = ctx.frame["split"].astype(str).to_numpy() if "split" in ctx.frame.columns else None
    for target in CALIBRATION_TARGETS:
        if target not in ctx.frame.columns:
            continue
        y_all = _numeric(ctx.frame, target)
        labeled, which = ctx.labeled, "labeled"
        if split is not None:
            val = ctx.labeled[split[ctx.labeled] == "val"]
            if np.isfinite(y_all[val]).sum() >= MIN_CALIBRATION_ROWS:
                labeled, which = val, "val"
        y = y_all[labeled]
        weights: dict[str, float] = {}
        n_used = 0
        for c in cols:
            x = _numeric(ctx.frame, c)[labeled]
            ok = np.isfinite(x) & np.isfinite(y)
            n_used = max(n_used, int(ok.sum()))
            if ok.sum() < MIN_CALIBRATION_ROWS or np.ptp(x[ok]) == 0 or np.ptp(y[ok]) == 0:
                weights[c] = 0.0
                continue
            rho = pd.Series(x[ok]).corr(pd.Series(y[ok]), method="spearman")
            weights[c] = float(max(rho, 0.0)) if np.isfinite(rho) else 0.0
        if n_used < MIN_CALIBRATION_ROWS:
            continue
        if sum(weights.values()) > 0:
            shown = ", ".join(f"{c} {w:.2f}" for c, w in sorted(weights.items(), key=lambda kv: -kv[1]))
            return weights, (f"uncertainty = percentiles weighted by their Spearman correlation with {target} "
                             f"on {n_used} {which} samples of this run: {shown}")
    return ({c: 1.0 for c in cols},
            f"uncertainty = mean percentile over {cols} (equal weights: fewer than {MIN_CALIBRATION_ROWS} labeled "
            f"samples with {' or '.join(CALIBRATION_TARGETS)}, or no column correlates with it)")


POOL_SHARE = 0.25  # the uncertainty pool never holds more than this share of the candidates (or the budget)


def combined_pool_size(n_candidates: int, budget: int, pool_factor: float) -> int:
    """How many of the most uncertain candidates the combined strategy spreads its picks over:
    ``pool_factor x budget``, but at most a quarter of the candidates (never below the
    budget), so the uncertainty stays a filter when the pool is small next to the budget
    (48 candidates and a budget of 8 would otherwise let 2/3 of them through)."""
    cap = max(budget, math.ceil(POOL_SHARE * n_candidates))
    return int(min(n_candidates, max(budget, min(math.ceil(pool_factor * budget), cap))))


def _combined(ctx: _Context, budget: int, params: dict) -> _Picks:
    cols = _uncertainty_signals(ctx)
    if not cols:
        picks = _diversity(ctx, budget, params)
        note = "no uncertainty columns (unc_*) for the unlabeled samples: combined fell back to diversity"
        logger.warning(note)
        return _Picks(picks.positions, picks.scores, picks.reasons, picks.extra, picks.notes + (note,))
    pool_factor = float(params.get("pool_factor", 4.0))
    weights, weight_note = _calibrated_weights(ctx, cols)
    total = sum(weights.values())
    u = sum(weights[c] * _percentile_rank(ctx.uncertainty(c)) for c in cols) / total  # (n_candidates,) in [0, 1]
    pool_size = combined_pool_size(len(u), budget, pool_factor)
    pool = np.lexsort((np.arange(len(u)), -u))[:pool_size]  # most uncertain first
    order_in_pool, dist = k_center_greedy(ctx.z[ctx.candidates[pool]], budget,
                                          initial_distance=ctx.dist_to_labeled[pool], weights=u[pool])
    order = pool[order_in_pool]
    med = ctx.median_distance()
    d0 = ctx.dist_to_labeled[order] / med
    # the strongest (weighted-in) uncertainty signal of each pick, by its percentile
    shares = {c: _top_share(ctx.uncertainty(c)) for c in cols if weights[c] > 0}
    reasons = []
    for p, r0 in zip(order, d0):
        best = min(shares, key=lambda c: shares[c][p])
        reasons.append(f"{_unc_phrase(ctx, best, np.array([p]))[0]}, {_distance_phrase(r0)}")
    notes = (weight_note,
             f"pool = {pool_size} most uncertain of {len(u)}, then uncertainty-weighted k-center greedy "
             "(each step takes the largest uncertainty x distance to labeled data and earlier picks)",
             "score = uncertainty x distance to labeled data and earlier picks / median distance to labeled data "
             "at pick time (never increases along the rank); uncertainty_percentile and distance_ratio are its inputs")
    score = _greedy_score(np.where(np.isfinite(dist), u[order] * dist / med, dist))
    extra = {"uncertainty_percentile": u[order], "distance_ratio": d0}
    return _Picks(order, score, reasons, extra, notes)


LabelStrategy = Callable[[_Context, int, dict], _Picks]
LABEL_STRATEGIES: dict[str, LabelStrategy] = {
    "combined": _combined,
    "entropy": _uncertainty_strategy("entropy"),
    "margin": _uncertainty_strategy("margin"),
    "least_confidence": _uncertainty_strategy("least_confidence"),
    "count": _uncertainty_strategy("count"),
    "loss_neighbourhood": _loss_neighbourhood,
    "diversity": _diversity,
}


def get_label_strategy(name: str) -> LabelStrategy:
    key = str(name).strip().lower()
    if key not in LABEL_STRATEGIES:
        raise ValueError(f"unknown label strategy {name!r}; valid: {sorted(LABEL_STRATEGIES)}")
    return LABEL_STRATEGIES[key]


# --------------------------------------------------------------------------------------
# Labeling: public API
# --------------------------------------------------------------------------------------

PICK_COLUMNS = ["rank", "sample_id", "file_name", "score", "reason", "strategy"]


@dataclass(frozen=True)
class LabelingResult:
    """Ranked labeling picks. ``picks`` columns: rank (1 = first to label), sample_id,
    file_name, score (the value the strategy ranked by: higher = more wanted, so it never
    increases with the rank; NaN, ranked last, where a sample has no value), reason, strategy, and
    strategy-specific extras (uncertainty, distance_ratio, neighbour_loss, ...).
    ``row_index``: positions of the picks in the input frame."""

    picks: pd.DataFrame
    provenance: dict[str, Any]
    row_index: np.ndarray

    @property
    def sample_ids(self) -> list[str]:
        return self.picks["sample_id"].astype(str).tolist()


def select_for_labeling(frame: pd.DataFrame, embeddings: Any, budget: int = 50, strategy: str = "combined",
                        model_hash: str | None = None, seed: int = 0, params: dict | None = None,
                        reduce_dims: int = 50) -> LabelingResult:
    """Rank the unlabeled samples for annotation.

    Args:
        frame: per-sample results (``split`` == "unlabeled" rows are the candidates).
        embeddings: (n, D) aligned with ``frame``.
        budget: number of picks (capped, with a warning, at the number of candidates).
        strategy: a name in :data:`LABEL_STRATEGIES`.
        model_hash: recorded in the provenance (e.g. the ONNX sha256).
        params: strategy options: ``k`` (loss_neighbourhood, default 10), ``pool_factor``
            (combined, default 4).
    Returns:
        :class:`LabelingResult` (empty picks when there are no unlabeled samples).
    """
    if int(budget) != budget or budget < 1:
        raise ValueError(f"budget must be a positive integer, got {budget!r}")
    fn = get_label_strategy(strategy)
    strategy = strategy.strip().lower()
    emb = check_embeddings(embeddings, len(frame))
    from armbench_segmentation.analysis.clustering import with_prefixes

    frame = with_prefixes(frame.reset_index(drop=True))  # bare uncertainty names -> unc_*
    params = dict(params or {})
    ctx = _Context(frame, emb, seed, reduce_dims)
    n_cand = len(ctx.candidates)
    if budget > n_cand:
        logger.warning("label budget %d is larger than the %d unlabeled samples: all %d are ranked",
                       budget, n_cand, n_cand)
    k = int(min(budget, n_cand))
    provenance = {
        "kind": "labeling", "strategy": strategy, "budget": int(budget), "n_picked": k, "params": params,
        "seed": seed, "reduce_dims": reduce_dims, "model_hash": model_hash,
        "embeddings_hash": embeddings_digest(emb), "n_candidates": n_cand, "n_labeled": int(len(ctx.labeled)),
        "created": _now(), "tool": f"armbench-segmentation {package_version()}",
    }
    if k == 0:
        return LabelingResult(pd.DataFrame(columns=PICK_COLUMNS), provenance, np.zeros(0, np.int64))
    picks = fn(ctx, k, params)
    rows = ctx.candidates[picks.positions]
    out = pd.DataFrame({
        "rank": np.arange(1, len(rows) + 1),
        "sample_id": frame["sample_id"].astype(str).to_numpy()[rows] if "sample_id" in frame else rows.astype(str),
        "file_name": frame["file_name"].to_numpy()[rows] if "file_name" in frame else None,
        "score": np.round(picks.scores.astype(np.float64), 6),
        "reason": picks.reasons,
        "strategy": strategy,
    })
    for name, values in picks.extra.items():
        v = np.asarray(values, dtype=np.float64)
        out[name] = [None if not np.isfinite(x) else round(float(x), 6) for x in v]
    provenance["notes"] = list(picks.notes)
    return LabelingResult(out, provenance, rows.astype(np.int64))


# --------------------------------------------------------------------------------------
# Labeling: exports
# --------------------------------------------------------------------------------------

def _write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, default=json_default) + "\n")


def write_label_picks(out_dir: str | Path, result: LabelingResult, frame: pd.DataFrame | None = None,
                      categories: Sequence[dict] | None = None,
                      crop_provider: Callable[[str], Any] | None = None, prefix: str = "label_picks",
                      store: Any = None, dataset: Any = None) -> dict[str, Path]:
    """Write the labeling picks into ``out_dir``.

    Files: ``{prefix}.csv`` (ranked list), ``{prefix}.provenance.json``, ``{prefix}.coco.json``
    and, with ``crop_provider``, ``crops/``. With ``store`` (the run's results store) the COCO
    file carries the model's predictions as polygon pre-annotations and
    ``{prefix}.label_studio.json`` + ``{prefix}.label_config.xml`` are written too
    (``analysis.labeling``: image id = rank, rank/score/reason per image, tasks in rank order);
    without it the COCO file lists the images only (same image entries, no annotations).

    Args:
        frame: the frame given to :func:`select_for_labeling`; its ``image_id``, ``width``,
            ``height`` and ``file_name`` columns fill the COCO images when there is no store
            (missing width/height are left out with a warning).
        categories: COCO categories without a store (default ARMBench's: 1 Tote, 2 Object);
            with a store they come from ``dataset``.
        crop_provider: ``crop_provider(sample_id) -> RGB uint8 image | list of them | None``,
            e.g. the regions of highest mask entropy; written as JPEG.
        store, dataset: the results store (run started) and the ``ArmbenchDataset``.
    Returns:
        name -> path of each file written ("csv", "provenance", "coco", and with a store
        "label_studio", "label_config"; "crops").
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"csv": out / f"{prefix}.csv", "coco": out / f"{prefix}.coco.json",
             "provenance": out / f"{prefix}.provenance.json"}
    write_csv(result.picks, paths["csv"])
    _write_json(paths["provenance"], result.provenance)
    if store is not None:
        from armbench_segmentation.analysis import labeling

        keys = [(str(frame.iloc[int(r)]["split"]), sid) if frame is not None and "split" in frame.columns else sid
                for r, sid in zip(result.row_index, result.sample_ids)]
        written = labeling.write_selection_exports(out, store, dataset, keys, prefix, picks=result.picks,
                                                   write_ids=False)
        paths.update({k: v for k, v in written.items() if k != "ids"})
    else:
        _write_picks_images_only(paths["coco"], result, frame, categories)
    if crop_provider is not None:
        paths["crops"] = _write_crops(out / "crops", result, crop_provider)
    return paths


def _write_picks_images_only(path: Path, result: LabelingResult, frame: pd.DataFrame | None,
                             categories: Sequence[dict] | None) -> None:
    """The picks' COCO file without predictions: the image entries ``analysis.labeling``
    writes (id = rank, rank, score, reason, sample_id, dataset_image_id), no annotations."""
    images, missing_size = [], 0
    for row_idx, pick in zip(result.row_index, result.picks.itertuples(index=False)):
        src = frame.iloc[int(row_idx)] if frame is not None else None
        image_id = python_scalar(src.get("image_id")) if src is not None else None
        file_name = pick.file_name if isinstance(pick.file_name, str) and pick.file_name else f"{pick.sample_id}.jpg"
        img = {"id": int(pick.rank), "file_name": file_name}
        w = python_scalar(src.get("width")) if src is not None else None
        h = python_scalar(src.get("height")) if src is not None else None
        if w is not None and h is not None:
            img["width"], img["height"] = int(w), int(h)
        else:
            missing_size += 1
        score = float(pick.score)
        img.update(sample_id=str(pick.sample_id), dataset_image_id=None if image_id is None else int(image_id),
                   rank=int(pick.rank), score=score if math.isfinite(score) else None, reason=str(pick.reason))
        images.append(img)
    if missing_size:
        logger.warning("%d of %d picked images have no width/height in the frame; COCO 'images' entries "
                       "are written without them (CVAT reads them from the uploaded files)", missing_size, len(images))
    coco = {"info": {"description": "armbench-segmentation labeling picks", "date_created": result.provenance.get("created"),
                     "strategy": result.provenance.get("strategy"), "model_hash": result.provenance.get("model_hash"),
                     "image_id": "rank"},
            "licenses": [], "images": images, "annotations": [],
            "categories": [dict(c) for c in (categories or DEFAULT_CATEGORIES)]}
    _write_json(path, coco)


def _write_crops(folder: Path, result: LabelingResult, provider: Callable[[str], Any]) -> Path:
    import cv2

    folder.mkdir(parents=True, exist_ok=True)
    n_written = 0
    from armbench_segmentation.errors import ArmbenchError

    for pick in result.picks.itertuples(index=False):
        try:
            crops = provider(str(pick.sample_id))
        except ArmbenchError as exc:  # e.g. the image became unreadable since the run: skip that pick
            logger.warning("no crop for pick %s: %s", pick.sample_id, exc)
            continue
        if crops is None:
            continue
        if isinstance(crops, np.ndarray) and crops.ndim == 3:
            crops = [crops]
        for j, crop in enumerate(crops):
            crop = np.asarray(crop)
            if crop.ndim != 3 or crop.shape[2] != 3 or crop.size == 0:
                raise ValueError(f"crop_provider({pick.sample_id!r}) must return RGB (H, W, 3) images, got shape {crop.shape}")
            ok, buf = cv2.imencode(".jpg", cv2.cvtColor(crop.astype(np.uint8), cv2.COLOR_RGB2BGR),
                                   [cv2.IMWRITE_JPEG_QUALITY, 95])
            if ok:
                (folder / f"{int(pick.rank):04d}_{pick.sample_id}_{j}.jpg").write_bytes(buf.tobytes())
                n_written += 1
    logger.info("wrote %d crops to %s", n_written, folder)
    return folder


# --------------------------------------------------------------------------------------
# Pruning
# --------------------------------------------------------------------------------------

PREFERENCES = ("balanced", "hard", "easy")


@dataclass(frozen=True)
class PruneResult:
    """``decisions``: one row per train sample (sample_id, file_name, cluster, subgroup,
    distance, band (1 = nearest the centroid ... n_bands = farthest, as the reasons' "distance
    band 1/4"), keep, reason, duplicate_of, similarity).
    ``summary``: one row per cluster (size, kept, dropped, duplicates_dropped, kept_band_<b> and
    size_band_<b> for b = 1 .. n_bands)."""

    decisions: pd.DataFrame
    summary: pd.DataFrame
    provenance: dict[str, Any]
    row_index: np.ndarray  # positions of the decision rows in the input frame

    @property
    def keep_ids(self) -> list[str]:
        return self.decisions.loc[self.decisions["keep"], "sample_id"].astype(str).tolist()

    @property
    def drop_ids(self) -> list[str]:
        return self.decisions.loc[~self.decisions["keep"], "sample_id"].astype(str).tolist()


def water_fill(sizes: Sequence[int], budget: int) -> np.ndarray:
    """Split ``budget`` across strata of the given sizes as evenly as their sizes allow.

    Each stratum gets ``min(size, t)`` for the largest level ``t`` that fits, and what is
    left is given one by one to the largest strata still below their size, so every
    non-empty stratum gets one before any gets two (when ``budget`` >= the number of strata).
    Returns (len(sizes),) int64 quotas summing to ``min(budget, sum(sizes))``.
    """
    sizes = np.asarray(sizes, dtype=np.int64)
    budget = int(min(max(budget, 0), sizes.sum()))
    quota = np.zeros_like(sizes)
    if budget == 0:
        return quota
    lo, hi = 0, int(sizes.max())
    while lo < hi:  # largest t with sum(min(size, t)) <= budget
        mid = (lo + hi + 1) // 2
        if np.minimum(sizes, mid).sum() <= budget:
            lo = mid
        else:
            hi = mid - 1
    quota = np.minimum(sizes, lo)
    left = budget - int(quota.sum())
    for i in np.argsort(-(sizes - quota), kind="stable"):
        if left == 0:
            break
        if quota[i] < sizes[i]:
            quota[i] += 1
            left -= 1
    return quota


def near_duplicates(unit: np.ndarray, order: np.ndarray, threshold: float,
                    chunk: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """SemDeDup-style: walk ``order`` and flag a point as a duplicate when its cosine
    similarity to any point earlier in the walk exceeds ``threshold``.

    Args:
        unit: (m, d) L2-normalized vectors.
        order: (m,) visiting order (earlier points are kept in preference).
    Returns:
        ``(partner (m,) int64: index of the most similar earlier point or -1, similarity (m,))``
        indexed like ``unit``; ``partner >= 0`` where similarity > threshold.
    """
    m = len(unit)
    partner = np.full(m, -1, np.int64)
    best = np.full(m, -np.inf)
    x = unit[order].astype(np.float32)  # (m, d) in visiting order
    for start in range(0, m, chunk):
        stop = min(m, start + chunk)
        sims = x[start:stop] @ x[:stop].T  # (b, stop)
        rows = np.arange(start, stop)
        sims[np.arange(stop)[None, :] >= rows[:, None]] = -np.inf  # only strictly earlier points
        j = sims.argmax(axis=1)  # (b,)
        s = sims[np.arange(stop - start), j]
        orig = order[rows]
        best[orig] = s
        dup = s > threshold
        partner[orig[dup]] = order[j[dup]]
    return partner, np.where(np.isfinite(best), best, np.nan)


def select_for_pruning(frame: pd.DataFrame, embeddings: Any, cluster_labels: Any = None,
                       keep_fraction: float = 0.8, n_bands: int = 4, prefer: str = "balanced",
                       dedup_threshold: float | None = 0.98, subgroup_size: int = 400,
                       n_clusters: int = 8, seed: int = 0, model_hash: str | None = None,
                       reduce_dims: int = 50) -> PruneResult:
    """Choose which train samples to keep at ``keep_fraction`` per cluster.

    Args:
        frame: per-sample results; rows with ``split == "train"`` are considered (all rows
            when there is no ``split`` column).
        embeddings: (n, D) aligned with ``frame``.
        cluster_labels: (n,) labels for all rows (e.g. ``ClusterResult.labels``) or a
            ClusterResult; None = k-means with ``n_clusters`` on the train rows.
        keep_fraction: in (0, 1]; each cluster keeps ``round(keep_fraction * size)`` (>= 1).
        n_bands: equal-width bands of distance to the centroid per cluster.
        prefer: ``"balanced"`` | ``"hard"`` | ``"easy"`` (which samples stay inside a stratum).
        dedup_threshold: cosine similarity above which two samples are near-duplicates
            (None disables); duplicates are dropped first, at most the cluster's drop budget.
        subgroup_size: clusters larger than this are split into ``ceil(size / subgroup_size)``
            sub-groups by k-means; strata are (band, sub-group) cells.
    Returns:
        :class:`PruneResult`.
    """
    if not 0 < keep_fraction <= 1:
        raise ValueError(f"keep_fraction must be in (0, 1], got {keep_fraction}; e.g. 0.8 keeps 80% of each cluster")
    if n_bands < 1:
        raise ValueError(f"n_bands must be >= 1, got {n_bands}")
    prefer = str(prefer).strip().lower()
    if prefer not in PREFERENCES:
        raise ValueError(f"prefer must be one of {PREFERENCES}, got {prefer!r}")
    if dedup_threshold is not None and not -1 <= dedup_threshold <= 1:
        raise ValueError(f"dedup_threshold is a cosine similarity in [-1, 1] (or None), got {dedup_threshold}")
    emb = check_embeddings(embeddings, len(frame))
    frame = frame.reset_index(drop=True)
    labels_all = getattr(cluster_labels, "labels", cluster_labels)
    if labels_all is not None:
        labels_all = np.asarray(labels_all)
        if labels_all.shape != (len(frame),):
            raise ValueError(f"cluster_labels must have one label per frame row ({len(frame)}), got shape "
                             f"{labels_all.shape}")
    rows = (np.flatnonzero(frame["split"].astype(str).to_numpy() == "train") if "split" in frame.columns
            else np.arange(len(frame)))
    rng = np.random.default_rng(seed)
    provenance = {"kind": "pruning", "keep_fraction": keep_fraction, "n_bands": n_bands, "prefer": prefer,
                  "dedup_threshold": dedup_threshold, "subgroup_size": subgroup_size, "seed": seed,
                  "model_hash": model_hash, "embeddings_hash": embeddings_digest(emb), "reduce_dims": reduce_dims,
                  "n_train": int(len(rows)), "created": _now(), "tool": f"armbench-segmentation {package_version()}",
                  "clusters": "given" if labels_all is not None else f"k-means k={n_clusters} on train rows"}
    dec_cols = ["sample_id", "file_name", "cluster", "subgroup", "distance", "band", "keep", "reason",
                "duplicate_of", "similarity"]
    if len(rows) == 0:
        return PruneResult(pd.DataFrame(columns=dec_cols), pd.DataFrame(columns=["cluster", "size", "kept", "dropped"]),
                           provenance, np.zeros(0, np.int64))
    fit_idx = fit_rows(np.ones(len(rows), bool), 20_000, rng)
    z = reduce_embeddings(emb[rows], fit_idx, reduce_dims, seed)  # (n_train, d)
    unit = _normalize(z)
    if labels_all is None:
        from armbench_segmentation.analysis.clustering import get_clusterer

        labels = np.asarray(get_clusterer("kmeans")(z, n_clusters, seed, {}), np.int64)
    else:
        labels = labels_all[rows].astype(np.int64)
    ids = frame["sample_id"].astype(str).to_numpy()[rows] if "sample_id" in frame.columns else rows.astype(str)

    n = len(rows)
    keep = np.zeros(n, bool)
    distance = np.zeros(n)
    band = np.zeros(n, np.int64)
    subgroup = np.zeros(n, np.int64)
    reason = np.empty(n, dtype=object)
    dup_of = np.full(n, None, dtype=object)
    similarity = np.full(n, np.nan)
    summary = []
    for cid in np.unique(labels):
        members = np.flatnonzero(labels == cid)
        m = len(members)
        target = int(min(m, max(1, round(keep_fraction * m))))
        drop_budget = m - target
        u = unit[members]
        centroid = _normalize(u.mean(axis=0, keepdims=True))[0]
        dist = 1.0 - u @ centroid  # (m,) cosine distance
        distance[members] = dist
        # bands: equal width over the cluster's distance range (CCS strata)
        lo, hi = float(dist.min()), float(dist.max())
        b = (np.zeros(m, np.int64) if hi - lo <= 1e-12
             else np.minimum(((dist - lo) / (hi - lo) * n_bands).astype(np.int64), n_bands - 1))
        band[members] = b + 1  # 1 = nearest the centroid, as in the reasons ("distance band 1/4")
        # sub-groups
        g = np.zeros(m, np.int64)
        if subgroup_size and m > subgroup_size:
            from sklearn.cluster import KMeans

            k = math.ceil(m / subgroup_size)
            g = KMeans(n_clusters=k, n_init=1, random_state=seed).fit_predict(u)
        subgroup[members] = g
        # near-duplicates, farthest from the centroid kept first (SemDeDup)
        dropped = np.zeros(m, bool)
        n_dup_total = n_dup_dropped = 0
        if dedup_threshold is not None and m > 1:
            partner, sim = near_duplicates(u, np.argsort(-dist, kind="stable"), dedup_threshold)
            similarity[members] = sim
            dups = np.flatnonzero(partner >= 0)
            n_dup_total = len(dups)
            dups = dups[np.argsort(-sim[dups], kind="stable")][:drop_budget]  # most similar first
            for d in dups:
                dropped[d] = True
                dup_of[members[d]] = ids[members[partner[d]]]
                reason[members[d]] = f"near-duplicate of {ids[members[partner[d]]]} (cosine {sim[d]:.3f})"
            n_dup_dropped = len(dups)
            if n_dup_total > n_dup_dropped:
                logger.info("cluster %s: %d near-duplicates, %d dropped (the keep fraction caps the rest)",
                            cid, n_dup_total, n_dup_dropped)
        # stratified keep among the rest
        remaining = np.flatnonzero(~dropped)
        cells = b[remaining] * (g.max() + 1) + g[remaining]
        cell_ids, cell_sizes = np.unique(cells, return_counts=True)
        quota = water_fill(cell_sizes, target)
        kept_local = np.zeros(m, bool)
        for cell, size, q in zip(cell_ids, cell_sizes, quota):
            in_cell = remaining[cells == cell]
            if prefer == "hard":
                chosen = in_cell[np.argsort(-dist[in_cell], kind="stable")[:q]]
            elif prefer == "easy":
                chosen = in_cell[np.argsort(dist[in_cell], kind="stable")[:q]]
            else:
                chosen = rng.choice(in_cell, size=int(q), replace=False) if q else in_cell[:0]
            kept_local[chosen] = True
            bb, gg = int(b[in_cell[0]]), int(g[in_cell[0]])
            where = _band_name(bb, n_bands) + (f", sub-group {gg}" if g.max() > 0 else "")
            for i in in_cell:
                if kept_local[i]:
                    reason[members[i]] = (f"kept: {where} (distance {dist[i]:.3f}); "
                                          f"{int(q)} of {int(size)} kept in this stratum")
                else:
                    reason[members[i]] = (f"dropped: {where} (distance {dist[i]:.3f}) is covered by the "
                                          f"{int(q)} of {int(size)} kept in this stratum ({prefer})")
        keep[members] = kept_local
        row = {"cluster": int(cid), "size": m, "kept": int(kept_local.sum()), "dropped": int(m - kept_local.sum()),
               "duplicates_found": n_dup_total, "duplicates_dropped": n_dup_dropped}
        for bb in range(n_bands):  # 1-based names, like the band column and the reasons
            row[f"kept_band_{bb + 1}"] = int((kept_local & (b == bb)).sum())
            row[f"size_band_{bb + 1}"] = int((b == bb).sum())
        summary.append(row)
    decisions = pd.DataFrame({
        "sample_id": ids,
        "file_name": frame["file_name"].to_numpy()[rows] if "file_name" in frame.columns else None,
        "cluster": labels, "subgroup": subgroup, "distance": np.round(distance, 6), "band": band, "keep": keep,
        "reason": reason, "duplicate_of": dup_of,
        "similarity": [None if not np.isfinite(s) else round(float(s), 6) for s in similarity],
    })
    provenance.update({"n_kept": int(keep.sum()), "n_dropped": int((~keep).sum())})
    return PruneResult(decisions, pd.DataFrame(summary), provenance, rows.astype(np.int64))


def _band_name(b: int, n_bands: int) -> str:
    if n_bands == 1:
        return "single distance band"
    label = "nearest the centroid" if b == 0 else "farthest from the centroid" if b == n_bands - 1 else "middle"
    return f"distance band {b + 1}/{n_bands} ({label})"


def _normalize(x: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return np.divide(x, norm, out=np.zeros_like(x, dtype=np.float64), where=norm > 0)


# --------------------------------------------------------------------------------------
# Pruning: exports
# --------------------------------------------------------------------------------------

def write_prune_lists(out_dir: str | Path, result: PruneResult, prefix: str = "prune") -> dict[str, Path]:
    """``{prefix}_keep.csv``, ``{prefix}_drop.csv`` (with reasons), ``{prefix}_summary.csv``
    and ``{prefix}.provenance.json`` in ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"keep": out / f"{prefix}_keep.csv", "drop": out / f"{prefix}_drop.csv",
             "summary": out / f"{prefix}_summary.csv", "provenance": out / f"{prefix}.provenance.json"}
    d = result.decisions
    write_csv(d[d["keep"]], paths["keep"])
    write_csv(d[~d["keep"]], paths["drop"])
    write_csv(result.summary, paths["summary"])
    _write_json(paths["provenance"], result.provenance)
    return paths


def write_pruned_coco(train_json: str | Path, out_path: str | Path, keep_ids: Iterable[str]) -> dict[str, int]:
    """Copy ``train_json`` keeping only the images whose file stem is in ``keep_ids`` and
    their annotations (categories, info and licenses unchanged).

    Returns counts: images_in, images_kept, annotations_in, annotations_kept, keep_ids_not_found.
    """
    from armbench_segmentation.errors import DatasetError

    src = Path(train_json)
    try:
        coco = json.loads(src.read_text())
    except OSError as exc:
        raise DatasetError(f"cannot read the original train COCO file {src}: {exc.strerror}; pass the "
                           "train.json of the dataset the analysis ran on") from None
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{src} is not valid JSON ({exc})") from None
    if not isinstance(coco, dict) or "images" not in coco:
        raise DatasetError(f"{src} is not a COCO file (no 'images' list)")
    keep = {str(k) for k in keep_ids}
    images = [im for im in coco["images"] if Path(str(im.get("file_name", ""))).stem in keep]
    kept_ids = {im["id"] for im in images}
    anns = [a for a in coco.get("annotations", []) if a.get("image_id") in kept_ids]
    found = {Path(str(im.get("file_name", ""))).stem for im in images}
    missing = len(keep - found)
    if missing:
        logger.warning("%d of %d kept sample ids have no image in %s (they are not in the pruned file)",
                       missing, len(keep), src)
    out = dict(coco)
    out["images"], out["annotations"] = images, anns
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_path, json.dumps(out))
    counts = {"images_in": len(coco["images"]), "images_kept": len(images),
              "annotations_in": len(coco.get("annotations", [])), "annotations_kept": len(anns),
              "keep_ids_not_found": missing}
    logger.info("pruned COCO written to %s: %s", out_path, counts)
    return counts


# --------------------------------------------------------------------------------------
# Settings adapters (what analysis/engine.py calls)
# --------------------------------------------------------------------------------------

def pick_for_labeling(frame: pd.DataFrame, embeddings: Any, settings: Any, model_hash: str | None = None) -> LabelingResult:
    """:func:`select_for_labeling` with ``settings.analysis.label_budget`` / ``label_strategy``
    and ``settings.data.seed``."""
    a = settings.analysis
    return select_for_labeling(frame, embeddings, budget=int(a.label_budget), strategy=a.label_strategy,
                               model_hash=model_hash, seed=int(settings.data.seed))


def prune(frame: pd.DataFrame, embeddings: Any, settings: Any, cluster_labels: Any = None,
          model_hash: str | None = None, **kwargs: Any) -> PruneResult:
    """:func:`select_for_pruning` with ``settings.analysis.prune_keep_fraction``; cluster
    labels default to the frame's ``cluster`` column when it has one."""
    if cluster_labels is None and "cluster" in frame.columns:
        cluster_labels = pd.to_numeric(frame["cluster"], errors="coerce").fillna(-1).to_numpy(np.int64)
    return select_for_pruning(frame, embeddings, cluster_labels, keep_fraction=float(settings.analysis.prune_keep_fraction),
                              n_clusters=int(settings.analysis.n_clusters), seed=int(settings.data.seed),
                              model_hash=model_hash, **kwargs)
