"""Population map: fit on labeled rows, transform the rest, registry, cache."""

import numpy as np
import pandas as pd
import pytest

from armbench_segmentation.analysis import projection as proj
from armbench_segmentation.analysis.projection import (
    ProjectionMethod, ProjectionUnavailable, fit_projection, get_projection, project, register_projection,
)


def _data(n=120, d=16, seed=0):
    rng = np.random.default_rng(seed)
    emb = rng.normal(size=(n, d)).astype(np.float32)
    emb[:, 0] *= 5  # a dominant direction
    split = np.array(["train", "val", "unlabeled"])[np.arange(n) % 3]
    return pd.DataFrame({"sample_id": [f"s{i}" for i in range(n)], "split": split}), emb


class DictCache:
    def __init__(self):
        self.store, self.gets = {}, 0

    def get_artifact(self, name, key):
        self.gets += 1
        return self.store.get((name, key))

    def put_artifact(self, name, key, value):
        self.store[(name, key)] = value


def test_pca_shape_dtype_and_fit_on_labeled():
    frame, emb = _data()
    p = fit_projection(frame, emb, "pca")
    assert p.xy.shape == (120, 2) and p.xy.dtype == np.float32 and np.isfinite(p.xy).all()
    assert p.n_fit == 80 and p.n_transformed == 40 and "labeled" in p.fitted_on


def test_transform_of_training_points_matches_fit_output():
    """Unlabeled copies of labeled rows land exactly where their originals are."""
    frame, emb = _data()
    labeled = frame["split"] != "unlabeled"
    emb2 = np.vstack([emb[labeled.to_numpy()], emb[labeled.to_numpy()][:10]])
    frame2 = pd.DataFrame({"split": ["train"] * int(labeled.sum()) + ["unlabeled"] * 10})
    xy = project(frame2, emb2, method="pca")
    np.testing.assert_allclose(xy[-10:], xy[:10], atol=1e-4)


def test_large_population_fits_on_subset_and_first_axis_follows_the_shared_factor():
    frame, emb = _data(n=300)
    rng = np.random.default_rng(1)
    latent = rng.normal(size=(300, 1))
    emb = emb + 3 * latent @ rng.normal(size=(1, emb.shape[1]))  # one factor shared by all features
    p = fit_projection(frame, emb, method="pca", max_fit=50)
    assert p.n_fit == 50 and p.n_transformed == 250 and "subset of 50" in p.fitted_on
    assert abs(np.corrcoef(p.xy[:, 0], latent[:, 0])[0, 1]) > 0.9


def test_no_split_column_fits_on_all_rows_and_nan_rows_are_tolerated():
    _, emb = _data(n=30)
    emb[3, :] = np.nan
    xy = project(None, emb)
    assert xy.shape == (30, 2) and np.isfinite(xy).all()


def test_cache_hit_skips_work():
    frame, emb = _data()
    cache = DictCache()
    a = fit_projection(frame, emb, cache=cache)
    assert ("projection", a.key) in cache.store and isinstance(cache.store[("projection", a.key)], np.ndarray)
    b = fit_projection(frame, emb, cache=cache)
    np.testing.assert_array_equal(a.xy, b.xy)
    assert b.fitted_on == a.fitted_on
    c = fit_projection(frame, emb, cache=cache, seed=1)  # other parameters: other key
    assert c.key != a.key


@pytest.mark.parametrize("shape_or_rows, match", [((10,), "2-D"), ((7, 4), "aligned")])
def test_bad_input_raises_with_fix(shape_or_rows, match):
    frame, _ = _data(n=10)
    with pytest.raises(ValueError, match=match):
        project(frame, np.zeros(shape_or_rows, np.float32))


def test_unknown_method_lists_valid_ones():
    with pytest.raises(ValueError, match="valid: .*pca"):
        get_projection("mds")


def test_missing_optional_dependency_is_actionable(monkeypatch):
    monkeypatch.setitem(proj.PROJECTIONS, "fancy", ProjectionMethod(
        "fancy", proj._run_pca, requires=("surely_not_a_module_xyz",), install="pip install fancy-maps"))
    frame, emb = _data(n=12)
    with pytest.raises(ProjectionUnavailable) as err:
        project(frame, emb, method="fancy")
    msg = str(err.value)
    assert "pip install fancy-maps" in msg and "--projection pca" in msg


def test_umap_without_package_points_to_install(monkeypatch):
    import importlib

    real = importlib.import_module

    def fake(name, *a, **k):
        if name == "umap":
            raise ImportError("No module named 'umap'")
        return real(name, *a, **k)

    monkeypatch.setattr(proj.importlib, "import_module", fake)
    frame, emb = _data(n=12)
    with pytest.raises(ProjectionUnavailable, match="pip install umap-learn, or use --projection pca"):
        project(frame, emb, method="umap")


def test_register_refuses_silent_override():
    with pytest.raises(ValueError, match="replace=True"):
        register_projection(ProjectionMethod("pca", proj._run_pca))


def _without(monkeypatch, module):
    import importlib

    real = importlib.import_module

    def fake(name, *a, **k):
        if name == module:
            raise ImportError(f"No module named {module!r}")
        return real(name, *a, **k)

    monkeypatch.setattr(proj.importlib, "import_module", fake)


def test_default_is_opentsne_and_pca_is_its_fallback(monkeypatch, caplog):
    from armbench_segmentation.config import AnalysisConfig

    assert AnalysisConfig().projection == proj.DEFAULT_METHOD == "tsne"
    frame, emb = _data(n=60)
    assert fit_projection(frame, emb).method == "tsne"
    _without(monkeypatch, "openTSNE")
    p = fit_projection(frame, emb)
    assert p.method == "pca" and any("falls back to pca" in n and "pip install openTSNE" in n for n in p.notes)
    np.testing.assert_allclose(p.xy, fit_projection(frame, emb, method="pca").xy)
    assert "falls back to pca" in caplog.text


def _blobs(n_per=150, d=64, gap=12.0, seed=0):
    """Two isotropic Gaussian blobs ``gap`` standard deviations apart along a random direction
    (a known structure; spread over every feature, as embedding structure is)."""
    rng = np.random.default_rng(seed)
    direction = rng.normal(size=d)
    direction /= np.linalg.norm(direction)
    emb = np.vstack([rng.normal(size=(n_per, d)), gap * direction + rng.normal(size=(n_per, d))]).astype(np.float32)
    blob = np.repeat([0, 1], n_per)
    split = np.array(["train", "val", "unlabeled"])[rng.integers(0, 3, 2 * n_per)]
    return pd.DataFrame({"sample_id": [f"s{i}" for i in range(2 * n_per)], "split": split}), emb, blob


def _separated(xy, blob):
    """Every point's nearest map neighbour is from its own blob, and the blobs' map centres
    are further apart than 3x the mean distance of a point to its own centre."""
    d = np.linalg.norm(xy[:, None] - xy[None], axis=2)
    np.fill_diagonal(d, np.inf)
    own = (blob[d.argmin(axis=1)] == blob).all()
    c = np.array([xy[blob == k].mean(axis=0) for k in (0, 1)])
    spread = np.mean([np.linalg.norm(xy[blob == k] - c[k], axis=1).mean() for k in (0, 1)])
    return own and np.linalg.norm(c[0] - c[1]) > 3 * spread


def test_tsne_keeps_two_blobs_apart_including_the_transformed_rows():
    frame, emb, blob = _blobs()
    p = fit_projection(frame, emb)  # the default: openTSNE fit on train+val, unlabeled transformed
    unl = (frame["split"] == "unlabeled").to_numpy()
    assert p.method == "tsne" and p.n_fit == (~unl).sum() and p.n_transformed == unl.sum() > 0
    assert np.isfinite(p.xy).all() and _separated(p.xy, blob)
    # the transformed rows land in their own blob: the nearest FIT row's blob is theirs
    fit_xy, fit_blob = p.xy[~unl], blob[~unl]
    nearest = np.linalg.norm(p.xy[unl][:, None] - fit_xy[None], axis=2).argmin(axis=1)
    assert (fit_blob[nearest] == blob[unl]).all()


def test_tsne_fit_subset_transforms_the_rest_into_the_same_map():
    frame, emb, blob = _blobs(n_per=200)
    p = fit_projection(frame, emb, max_fit=120)
    assert p.n_fit == 120 and p.n_transformed == 280 and "subset of 120" in p.fitted_on
    assert _separated(p.xy, blob)


def test_tsne_copies_of_fit_rows_land_beside_their_originals():
    """openTSNE's transform places a new point among its neighbours in the fitted map: an
    exact copy of a fitted row lands much closer to it than the typical neighbour spacing."""
    frame, emb, _ = _blobs(n_per=100)
    lab = (frame["split"] != "unlabeled").to_numpy()
    emb2 = np.vstack([emb[lab], emb[lab][:15]])
    frame2 = pd.DataFrame({"split": ["train"] * int(lab.sum()) + ["unlabeled"] * 15})
    xy = project(frame2, emb2)
    n = int(lab.sum())
    d = np.linalg.norm(xy[:n, None] - xy[None, :n], axis=2)
    np.fill_diagonal(d, np.inf)
    typical = np.median(d.min(axis=1))  # a fitted row's distance to its nearest fitted neighbour
    assert np.median(np.linalg.norm(xy[n:] - xy[:15], axis=1)) < 3 * typical


def test_empty_in_empty_out():
    xy = project(pd.DataFrame({"split": []}), np.zeros((0, 8), np.float32))
    assert xy.shape == (0, 2)
