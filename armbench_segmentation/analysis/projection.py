"""Population map: a 2-D projection of per-sample embeddings.

The map is fitted on the labeled samples (train + val) and the unlabeled ones are
*transformed* into it, so new samples land on an existing map without a refit. For very
large populations the fit uses a random subset (``max_fit`` rows) and every other row is
transformed, which keeps memory and time bounded (PCA on 44k x 512 takes seconds).

The default is ``tsne`` (openTSNE, a map with neighbourhoods: clusters of similar images stay
together): fitted on at most 10,000 labeled rows, every other row placed into the fitted map
by openTSNE's ``transform`` (the fitted points do not move). 44,253 x 512 embeddings take
< 60 s on 2 cores (``benchmarks/bench_map.py`` prints the time and a neighbourhood score of
each method). ``pca`` is the fast fallback, used when openTSNE is not installed (warned,
noted on the result).

Methods sit behind a name registry (``PROJECTIONS``); optional dependencies are imported
only when their method is used, and a missing one raises :class:`ProjectionUnavailable`
that says what to install and which method to use instead (or falls back, for ``tsne``).

Pre-processing (all methods): non-finite values are replaced by the column mean of the fit
rows, features are centred and scaled by their standard deviation (features with a
near-zero spread are left unscaled instead of being blown up), then

- ``pca``: 2 principal components of that standardized space (randomized SVD);
- ``umap`` / ``tsne``: first reduced to ``min(50, D)`` principal components (the usual
  de-noising step, and it makes the neighbour search cheap), then the non-linear method.

Example:
    >>> xy = project(frame, embeddings, method="pca", seed=0)   # (n, 2) float32
"""

from __future__ import annotations

import hashlib
import importlib
import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

import numpy as np

from armbench_segmentation.errors import ArmbenchError
from armbench_segmentation.splits import LABELED_SPLITS

logger = logging.getLogger(__name__)

DEFAULT_METHOD = "tsne"  # the map's default (config analysis.projection); "pca" is the fallback
DEFAULT_MAX_FIT = 20_000
TSNE_MAX_FIT = 10_000  # openTSNE fit rows (the rest transformed); see TSNE_DEFAULTS
_PRE_PCA_DIMS = 50


class ArtifactCache(Protocol):
    """What the analysis engine's cache offers (both calls are optional to implement well)."""

    def get_artifact(self, name: str, key: str) -> Any: ...

    def put_artifact(self, name: str, key: str, value: Any) -> None: ...


class ProjectionUnavailable(ArmbenchError):
    """A projection method needs an optional package that is not installed."""


# --------------------------------------------------------------------------------------
# Shared pre-processing (also used by clustering and selection)
# --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Standardizer:
    """Column-wise centring and scaling learned on the fit rows."""

    mean: np.ndarray  # (D,) float64
    scale: np.ndarray  # (D,) float64, 1 where the spread is ~0

    @classmethod
    def fit(cls, x: np.ndarray) -> "Standardizer":
        """``x`` (n, D) with NaN allowed (ignored per column)."""
        with np.errstate(all="ignore"):
            mean = np.nanmean(x, axis=0, dtype=np.float64) if len(x) else np.zeros(x.shape[1])
            std = np.nanstd(x, axis=0, dtype=np.float64) if len(x) else np.ones(x.shape[1])
        mean = np.where(np.isfinite(mean), mean, 0.0)
        std = np.where(np.isfinite(std), std, 0.0)
        positive = std[std > 0]
        floor = 1e-3 * float(np.median(positive)) if positive.size else 0.0
        scale = np.where(std > max(floor, 1e-12), std, 1.0)
        return cls(mean=mean, scale=scale)

    def transform(self, x: np.ndarray) -> np.ndarray:
        """(n, D) -> (n, D) float32; non-finite entries become 0 (the column mean)."""
        out = (np.asarray(x, dtype=np.float64) - self.mean) / self.scale
        out[~np.isfinite(out)] = 0.0
        return out.astype(np.float32)


def check_embeddings(embeddings: Any, n_rows: int | None = None) -> np.ndarray:
    """Validate and return embeddings as (n, D) float32 (non-finite values counted + warned)."""
    emb = np.asarray(embeddings)
    if emb.ndim != 2:
        raise ValueError(f"embeddings must be a 2-D array (n_samples, n_features), got shape {emb.shape}; "
                         "reshape with embeddings.reshape(len(embeddings), -1)")
    if n_rows is not None and emb.shape[0] != n_rows:
        raise ValueError(f"embeddings have {emb.shape[0]} rows but the frame has {n_rows}; "
                         "they must be aligned row by row with the frame")
    if not np.issubdtype(emb.dtype, np.number):
        raise ValueError(f"embeddings must be numeric, got dtype {emb.dtype}")
    emb = emb.astype(np.float32, copy=False)
    bad = ~np.isfinite(emb)
    if bad.any():
        rows = int(bad.any(axis=1).sum())
        logger.warning("embeddings: %d of %d rows hold NaN/inf values; they are replaced by the column mean",
                       rows, emb.shape[0])
    return emb


def labeled_mask(frame: Any, n: int) -> np.ndarray:
    """(n,) bool: rows whose split is train or val; all True when the frame has no split column."""
    if frame is None or "split" not in getattr(frame, "columns", ()):
        return np.ones(n, dtype=bool)
    return frame["split"].astype(str).isin(LABELED_SPLITS).to_numpy()


def fit_rows(candidates: np.ndarray, max_fit: int, rng: np.random.Generator) -> np.ndarray:
    """Indices used to fit: ``candidates`` (bool mask), subsampled to ``max_fit`` rows (sorted)."""
    idx = np.flatnonzero(candidates)
    if idx.size == 0:
        idx = np.arange(candidates.size)
    if idx.size > max_fit:
        logger.info("fitting on a random subset of %d of %d rows; the other %d are transformed",
                    max_fit, idx.size, idx.size - max_fit)
        idx = np.sort(rng.choice(idx, size=max_fit, replace=False))
    return idx


def reduce_embeddings(embeddings: np.ndarray, fit_index: np.ndarray | None = None,
                      n_components: int = _PRE_PCA_DIMS, seed: int = 0) -> np.ndarray:
    """Standardize and reduce to at most ``n_components`` principal components.

    Args:
        embeddings: (n, D) float.
        fit_index: rows used to learn the scaling and the components (default: all).
        n_components: upper bound on the output width.
    Returns:
        (n, d) float32 with d = min(n_components, D, n_fit).
    """
    emb = check_embeddings(embeddings)
    n, dim = emb.shape
    if n == 0:
        return np.zeros((0, min(n_components, dim)), dtype=np.float32)
    fit_index = np.arange(n) if fit_index is None else np.asarray(fit_index)
    std = Standardizer.fit(emb[fit_index])
    z = std.transform(emb)  # (n, D)
    d = int(min(n_components, dim, len(fit_index)))
    if d >= dim:
        return z
    from sklearn.decomposition import PCA

    pca = PCA(n_components=d, svd_solver="randomized", random_state=seed).fit(z[fit_index])
    return pca.transform(z).astype(np.float32)  # (n, d)


# --------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------

Mapper = Callable[[np.ndarray, np.ndarray, int, dict], tuple[np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class ProjectionMethod:
    """One entry of the registry.

    ``run(z_fit, z_rest, seed, params) -> (xy_fit, xy_rest)`` gets standardized inputs.
    ``requires`` lists importable module names, checked before running; ``install`` is the
    hint shown when one is missing. ``fallback``: the method used instead when a required
    module is missing (with a warning and a note on the result) rather than failing.
    ``can_transform=False`` means the method cannot place new points, so it is fitted on
    every row at once (and the result says so).
    """

    name: str
    run: Mapper
    requires: tuple[str, ...] = ()
    install: str = ""
    can_transform: bool = True
    description: str = ""
    max_fit: int = DEFAULT_MAX_FIT  # fit on at most this many rows unless the caller says otherwise
    fallback: str | None = None

    def check_available(self) -> None:
        for module in self.requires:
            try:
                importlib.import_module(module)
            except ImportError as exc:
                raise ProjectionUnavailable(
                    f"projection {self.name!r} needs the optional package {module!r}, which cannot be "
                    f"imported ({exc}). Fix: {self.install or 'pip install ' + module}, "
                    f"or use --projection pca (fast, no extra dependency)."
                ) from None


PROJECTIONS: dict[str, ProjectionMethod] = {}


def register_projection(method: ProjectionMethod, *, replace: bool = False) -> ProjectionMethod:
    """Add a method to :data:`PROJECTIONS` (``replace=True`` to override an existing name)."""
    if method.name in PROJECTIONS and not replace:
        raise ValueError(f"projection {method.name!r} is already registered; pass replace=True to override")
    PROJECTIONS[method.name] = method
    return method


def get_projection(name: str) -> ProjectionMethod:
    """Look up a method by name (case-insensitive); unknown names list the valid ones."""
    key = str(name).strip().lower()
    if key not in PROJECTIONS:
        raise ValueError(f"unknown projection method {name!r}; valid: {sorted(PROJECTIONS)}")
    return PROJECTIONS[key]


def _pre_pca(z_fit: np.ndarray, z_rest: np.ndarray, seed: int, dims: int = _PRE_PCA_DIMS):
    d = min(dims, z_fit.shape[1], z_fit.shape[0])
    if d >= z_fit.shape[1]:
        return z_fit, z_rest
    from sklearn.decomposition import PCA

    pca = PCA(n_components=d, svd_solver="randomized", random_state=seed).fit(z_fit)
    return pca.transform(z_fit).astype(np.float32), pca.transform(z_rest).astype(np.float32) if len(z_rest) else \
        np.zeros((0, d), np.float32)


def _run_pca(z_fit, z_rest, seed, params):
    from sklearn.decomposition import PCA

    dims = min(2, z_fit.shape[1], z_fit.shape[0])
    pca = PCA(n_components=dims, svd_solver="randomized" if min(z_fit.shape) > 10 else "full",
              random_state=seed).fit(z_fit)
    xy_fit, xy_rest = pca.transform(z_fit), pca.transform(z_rest) if len(z_rest) else np.zeros((0, dims))
    return _pad2(xy_fit), _pad2(xy_rest)


def _run_umap(z_fit, z_rest, seed, params):
    import umap  # noqa: PLC0415  (optional; ~20 s of JIT on first import)

    z_fit, z_rest = _pre_pca(z_fit, z_rest, seed)
    kwargs = {"n_neighbors": 15, "min_dist": 0.1, "metric": "euclidean"}
    kwargs.update(params)
    reducer = umap.UMAP(n_components=2, random_state=seed, **kwargs).fit(z_fit)
    xy_rest = reducer.transform(z_rest) if len(z_rest) else np.zeros((0, 2))
    return reducer.embedding_, xy_rest


#: openTSNE's settings for the map (tuned with benchmarks/bench_map.py: 44,253 x 512 in < 60 s on
#: 2 cores). FFT-accelerated gradients (linear in n); the fit rows are capped by TSNE_MAX_FIT.
TSNE_DEFAULTS = {"perplexity": 30, "n_jobs": 2, "negative_gradient_method": "fft", "n_iter": 500,
                 "early_exaggeration_iter": 250}
#: openTSNE's transform of the other rows into the fitted map (its own defaults, stated here).
TSNE_TRANSFORM = {"perplexity": 5, "n_iter": 250}
FFT_FROM = 10_000  # fit rows from which FFT gradients beat Barnes-Hut (openTSNE's own "auto" rule)


def _run_opentsne(z_fit, z_rest, seed, params):
    import openTSNE  # noqa: PLC0415

    z_fit, z_rest = _pre_pca(z_fit, z_rest, seed)
    kwargs = dict(TSNE_DEFAULTS)
    kwargs.update(params)
    transform = {k: kwargs.pop(k) for k in list(kwargs) if k.startswith("transform_")}
    kwargs["perplexity"] = min(kwargs["perplexity"], (len(z_fit) - 1) / 3)  # openTSNE's own bound
    if len(z_fit) < FFT_FROM and "negative_gradient_method" not in params:
        kwargs["negative_gradient_method"] = "bh"  # Barnes-Hut: faster below ~10k rows (FFT's grid has a fixed cost)
    if len(z_fit) + len(z_rest) < 2_000 and "n_jobs" not in params:
        kwargs["n_jobs"] = 1  # a few hundred rows: thread hand-offs per iteration cost more than they save
    emb = openTSNE.TSNE(n_components=2, random_state=seed, **kwargs).fit(z_fit)
    # the rest: each new row placed among its neighbours in the FIT rows, then optimised
    # against the fixed map (openTSNE's TSNEEmbedding.transform; the fit rows do not move)
    tkw = dict(TSNE_TRANSFORM)
    tkw.update({k[len("transform_"):]: v for k, v in transform.items()})
    tkw["perplexity"] = min(tkw["perplexity"], (len(z_fit) - 1) / 3)
    xy_rest = emb.transform(z_rest, **tkw) if len(z_rest) else np.zeros((0, 2))
    return np.asarray(emb), np.asarray(xy_rest)


def _pad2(xy: np.ndarray) -> np.ndarray:
    """Pad (n, d<2) to (n, 2) with zeros (degenerate inputs: one feature or one row)."""
    xy = np.asarray(xy)
    if xy.shape[1] < 2:
        xy = np.hstack([xy, np.zeros((len(xy), 2 - xy.shape[1]))])
    return xy


def _register_defaults() -> None:
    register_projection(ProjectionMethod("pca", _run_pca, description="PCA, 2 components (fast; the fallback)"))
    register_projection(ProjectionMethod(
        "umap", _run_umap, requires=("umap",), install="pip install umap-learn",
        description="UMAP (umap-learn); new points transformed into the fitted map"))
    register_projection(ProjectionMethod(
        "tsne", _run_opentsne, requires=("openTSNE",), install="pip install openTSNE",
        description="t-SNE (openTSNE, FFT gradients; the default): fitted on up to 10,000 labeled rows, "
        "the rest transformed into the fitted map", max_fit=TSNE_MAX_FIT, fallback="pca"))


# --------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Projection:
    """A built map and how it was built."""

    xy: np.ndarray  # (n, 2) float32
    method: str
    seed: int
    n_fit: int  # rows the method was fitted on
    n_transformed: int  # rows placed into the fitted map afterwards
    fitted_on: str  # "labeled", "all rows", ...
    key: str  # cache key
    notes: tuple[str, ...] = field(default=())

    def as_dict(self) -> dict[str, Any]:
        return {"method": self.method, "seed": self.seed, "n_fit": self.n_fit,
                "n_transformed": self.n_transformed, "fitted_on": self.fitted_on,
                "key": self.key, "notes": list(self.notes)}


def embeddings_digest(embeddings: np.ndarray) -> str:
    """Short content hash of an embedding matrix (shape, dtype and bytes)."""
    emb = np.ascontiguousarray(embeddings)
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{emb.shape}|{emb.dtype}".encode())
    h.update(emb.tobytes() if emb.size == 0 else memoryview(emb).cast("B"))
    return h.hexdigest()


def projection_key(embeddings: np.ndarray, fit_candidates: np.ndarray, method: str, seed: int,
                   max_fit: int, params: dict | None) -> str:
    h = hashlib.blake2b(digest_size=16)
    h.update(embeddings_digest(embeddings).encode())
    h.update(np.packbits(fit_candidates.astype(bool)).tobytes())
    h.update(repr((method, seed, max_fit, sorted((params or {}).items()), _method_variant(method))).encode())
    return h.hexdigest()


def _method_variant(method: str) -> str:
    """What else decides the output of a method: its settings in this module."""
    if method == "tsne":
        return repr((_PRE_PCA_DIMS, sorted(TSNE_DEFAULTS.items()), sorted(TSNE_TRANSFORM.items())))
    return ""


def fit_projection(frame: Any, embeddings: Any, method: str = DEFAULT_METHOD, seed: int = 0, cache: Any = None,
                   max_fit: int | None = None, params: dict | None = None) -> Projection:
    """Build the population map and describe how (see module docstring).

    Args:
        frame: per-sample DataFrame aligned with ``embeddings`` (uses its ``split`` column;
            None = fit on all rows).
        embeddings: (n, D) float.
        method: a name in :data:`PROJECTIONS` (``pca``, ``umap``, ``tsne``).
        seed: random seed (subset choice and the method's own randomness).
        cache: optional object with ``get_artifact(name, key)`` / ``put_artifact(name, key, value)``.
        max_fit: at most this many rows are used to fit; the others are transformed (None:
            the method's own cap, ``ProjectionMethod.max_fit``: 10,000 for tsne, 20,000 otherwise).
        params: extra keyword arguments for the method (e.g. ``{"n_neighbors": 30}`` for UMAP).
    Returns:
        :class:`Projection` with ``xy`` (n, 2) float32, finite.
    Raises:
        ValueError: bad shapes or unknown method. ProjectionUnavailable: optional package missing.
    """
    spec = get_projection(method)
    notes: list[str] = []
    if spec.fallback is not None:
        try:
            spec.check_available()
        except ProjectionUnavailable as exc:
            msg = f"{exc.args[0].split('. Fix:')[0]}: the map falls back to {spec.fallback} (Fix: {spec.install})"
            logger.warning(msg)
            notes.append(msg)
            spec = get_projection(spec.fallback)
    max_fit = spec.max_fit if max_fit is None else int(max_fit)
    if max_fit < 2:
        raise ValueError(f"max_fit must be >= 2, got {max_fit}")
    n = len(frame) if frame is not None else None
    emb = check_embeddings(embeddings, n)
    n = emb.shape[0]
    params = dict(params or {})
    candidates = labeled_mask(frame, n)
    key = projection_key(emb, candidates, spec.name, seed, max_fit, params)
    if n == 0:
        return Projection(np.zeros((0, 2), np.float32), spec.name, seed, 0, 0, "nothing", key)
    cached = _cache_get(cache, key)
    if cached is not None:
        return cached
    spec.check_available()

    rng = np.random.default_rng(seed)
    if spec.can_transform:
        fit_index = fit_rows(candidates, max_fit, rng)
        fitted_on = "labeled (train+val)" if candidates.any() else "all rows (no labeled rows)"
        if len(fit_index) < candidates.sum():
            fitted_on += f", random subset of {len(fit_index)}"
    else:
        fit_index = np.arange(n)
        fitted_on = "all rows"
        msg = (f"{spec.name} cannot place new points, so the map was fitted on all {n} rows at once "
               "(labeled and unlabeled)")
        notes.append(msg)
        logger.warning(msg)
        if n > max_fit:
            logger.warning("%s on %d rows will be slow; consider --projection pca", spec.name, n)
    if len(fit_index) < 3 and spec.name != "pca":
        notes.append(f"only {len(fit_index)} rows to fit: fell back to PCA")
        spec = get_projection("pca")

    rest = np.ones(n, dtype=bool)
    rest[fit_index] = False
    std = Standardizer.fit(emb[fit_index])
    z_fit, z_rest = std.transform(emb[fit_index]), std.transform(emb[rest])
    xy_fit, xy_rest = spec.run(z_fit, z_rest, seed, params)
    xy = np.zeros((n, 2), dtype=np.float32)
    xy[fit_index] = np.asarray(xy_fit, dtype=np.float32)
    xy[rest] = np.asarray(xy_rest, dtype=np.float32)
    if not np.isfinite(xy).all():
        bad = int((~np.isfinite(xy)).any(axis=1).sum())
        logger.warning("%s produced %d non-finite coordinates; they are set to 0", spec.name, bad)
        xy[~np.isfinite(xy)] = 0.0
    result = Projection(xy, spec.name, seed, int(len(fit_index)), int(rest.sum()), fitted_on, key, tuple(notes))
    _cache_put(cache, key, result)
    return result


def project(frame: Any, embeddings: Any, method: str = DEFAULT_METHOD, seed: int = 0, cache: Any = None,
            **kwargs: Any) -> np.ndarray:
    """(n, 2) float32 map coordinates; see :func:`fit_projection` for the arguments."""
    return fit_projection(frame, embeddings, method=method, seed=seed, cache=cache, **kwargs).xy


def _cache_get(cache: Any, key: str) -> Projection | None:
    """The store keeps arrays (.npy) and JSON apart: coordinates under "projection", the
    description under "projection_meta"; a missing or unreadable entry is a miss."""
    if cache is None or not hasattr(cache, "get_artifact"):
        return None
    try:
        xy = cache.get_artifact("projection", key)
        meta = cache.get_artifact("projection_meta", key) or {}
    except KeyError:
        return None
    if not isinstance(xy, np.ndarray) or xy.ndim != 2 or xy.shape[1] != 2 or not isinstance(meta, dict):
        return None
    return Projection(xy.astype(np.float32), str(meta.get("method", "cached")), int(meta.get("seed", 0)),
                      int(meta.get("n_fit", 0)), int(meta.get("n_transformed", 0)),
                      str(meta.get("fitted_on", "cached")), key, tuple(meta.get("notes", ())))


def _cache_put(cache: Any, key: str, result: Projection) -> None:
    if cache is None or not hasattr(cache, "put_artifact"):
        return
    cache.put_artifact("projection", key, np.ascontiguousarray(result.xy))
    cache.put_artifact("projection_meta", key, result.as_dict())


_register_defaults()
