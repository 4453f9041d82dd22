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
    xy = project(frame2, emb2)
    np.testing.assert_allclose(xy[-10:], xy[:10], atol=1e-4)


def test_large_population_fits_on_subset_and_first_axis_follows_the_shared_factor():
    frame, emb = _data(n=300)
    rng = np.random.default_rng(1)
    latent = rng.normal(size=(300, 1))
    emb = emb + 3 * latent @ rng.normal(size=(1, emb.shape[1]))  # one factor shared by all features
    p = fit_projection(frame, emb, max_fit=50)
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


def test_sklearn_tsne_fallback_fits_all_rows_and_says_so(monkeypatch):
    monkeypatch.setattr(proj, "_module_available", lambda name: False)
    frame, emb = _data(n=40)
    p = fit_projection(frame, emb, method="tsne", params={"max_iter": 250})
    assert p.xy.shape == (40, 2) and p.n_fit == 40 and p.n_transformed == 0
    assert any("cannot place new points" in n for n in p.notes)


def test_empty_in_empty_out():
    xy = project(pd.DataFrame({"split": []}), np.zeros((0, 8), np.float32))
    assert xy.shape == (0, 2)
