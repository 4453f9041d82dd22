"""Labeling and pruning picks: known answers, coverage, duplicates, exports."""

import json

import numpy as np
import pandas as pd
import pytest

from armbench_segmentation.analysis.selection import (
    LABEL_STRATEGIES, combined_pool_size, k_center_greedy, near_duplicates, select_for_labeling, select_for_pruning, water_fill,
    write_label_picks, write_prune_lists, write_pruned_coco,
)
from armbench_segmentation.errors import DatasetError


def _frame(n=150, d=12, seed=0):
    rng = np.random.default_rng(seed)
    emb = rng.normal(size=(n, d)).astype(np.float32)
    split = np.array(["train", "val", "unlabeled"])[np.arange(n) % 3]
    frame = pd.DataFrame({
        "sample_id": [f"s{i:03d}" for i in range(n)], "file_name": [f"s{i:03d}.jpg" for i in range(n)],
        "image_id": np.arange(n) + 100, "width": 2448, "height": 2048, "split": split,
        "loss": rng.uniform(size=n), "over_segmented": rng.integers(0, 2, n), "under_segmented": rng.integers(0, 2, n),
        "unc_mask_entropy": rng.uniform(size=n), "unc_score_entropy": rng.uniform(size=n),
        "unc_margin": rng.uniform(size=n), "unc_least_confidence": rng.uniform(size=n),
        "unc_low_conf_count": rng.integers(0, 4, n),
    })
    frame.loc[split == "unlabeled", ["loss", "over_segmented", "under_segmented"]] = np.nan
    return frame, emb


# ------------------------------------------------------------------ labeling

def test_k_center_greedy_on_a_line_picks_the_extremes_first():
    pts = np.arange(11, dtype=float)[:, None]  # 0..10
    order, dist = k_center_greedy(pts, 3, seeds=np.array([[5.0]]))
    assert set(order[:2]) == {0, 10} and dist[0] == 5
    assert order[2] in (2, 3, 7, 8)  # then the middle of a remaining gap
    order, _ = k_center_greedy(pts, 2)  # unseeded: the extreme farthest from the mean, then the other one
    assert set(order) == {0, 10}


def test_diversity_strategy_on_a_line_seeded_by_labeled_set():
    xs = np.arange(21, dtype=np.float32)
    emb = np.stack([xs, np.zeros_like(xs)], axis=1)
    split = np.where((xs >= 8) & (xs <= 12), "train", "unlabeled")
    frame = pd.DataFrame({"sample_id": [f"p{int(x)}" for x in xs], "split": split})
    res = select_for_labeling(frame, emb, budget=2, strategy="diversity")
    assert set(res.sample_ids) == {"p0", "p20"}
    assert "far from labeled data" in res.picks["reason"].iloc[0]


@pytest.mark.parametrize("strategy", sorted(LABEL_STRATEGIES))
def test_every_strategy_ranks_unlabeled_only_with_reasons_and_provenance(strategy):
    frame, emb = _frame()
    res = select_for_labeling(frame, emb, budget=7, strategy=strategy, model_hash="sha-x")
    p = res.picks
    assert list(p["rank"]) == list(range(1, 8)) and p["sample_id"].is_unique
    assert set(frame.loc[res.row_index, "split"]) == {"unlabeled"}
    assert p["reason"].str.len().min() > 10 and np.isfinite(p["score"]).all()
    prov = res.provenance
    assert prov["model_hash"] == "sha-x" and prov["strategy"] == strategy and prov["budget"] == 7
    assert prov["created"] and prov["embeddings_hash"]


def test_entropy_picks_are_the_top_entropy_and_reason_names_the_percentile():
    frame, emb = _frame()
    res = select_for_labeling(frame, emb, budget=3, strategy="entropy")
    unl = frame[frame["split"] == "unlabeled"]
    assert res.sample_ids == unl.nlargest(3, "unc_mask_entropy")["sample_id"].tolist()
    assert res.picks["reason"].iloc[0].startswith("mask entropy ") and "(top 2%)" in res.picks["reason"].iloc[0]


def test_loss_neighbourhood_prefers_samples_next_to_failing_labeled_ones():
    frame, emb = _frame()
    bad = frame.index[frame["split"] == "train"][:5]
    target = frame.index[frame["split"] == "unlabeled"][0]
    emb[bad] = emb[target] + 0.01 * np.arange(1, 6)[:, None]
    frame.loc[bad, "loss"] = 1.0
    res = select_for_labeling(frame, emb, budget=1, strategy="loss_neighbourhood", params={"k": 5})
    assert res.sample_ids == [frame.loc[target, "sample_id"]]
    assert "mean loss 1.00" in res.picks["reason"].iloc[0]


def test_combined_picks_are_uncertain_and_falls_back_without_uncertainty():
    frame, emb = _frame()
    one = frame.drop(columns=["unc_score_entropy", "unc_margin", "unc_least_confidence", "unc_low_conf_count"])
    res = select_for_labeling(one, emb, budget=5, strategy="combined", params={"pool_factor": 2})
    top10 = one[one["split"] == "unlabeled"].nlargest(10, "unc_mask_entropy")["sample_id"]
    assert set(res.sample_ids) <= set(top10) and (res.picks["uncertainty_percentile"] >= 0.8).all()
    assert "mask entropy" in res.picks["reason"].iloc[0] and "labeled data" in res.picks["reason"].iloc[0]
    bare = frame.drop(columns=[c for c in frame.columns if c.startswith("unc_")])
    res2 = select_for_labeling(bare, emb, budget=5)
    assert any("fell back to diversity" in n for n in res2.provenance["notes"])


def test_weighted_k_center_takes_the_largest_weight_times_distance():
    pts = np.arange(11, dtype=float)[:, None]  # 0..10, labeled point at 5
    w = np.full(11, 0.1)
    w[9] = 1.0
    order, dist = k_center_greedy(pts, 2, seeds=np.array([[5.0]]), weights=w)
    assert order[0] == 9 and dist[0] == 4  # 1.0 x 4 beats 0.1 x 5 at either end
    assert order[1] in (0, 10) and dist[1] == 5  # then the ends (0.1 x 5 > 0.1 x 4 ...)
    order, _ = k_center_greedy(pts, 1, weights=w)  # unseeded: the largest weight first
    assert order.tolist() == [9]


def test_combined_pool_is_a_filter_even_when_candidates_are_few():
    assert combined_pool_size(10_000, 50, 4) == 200  # pool_factor x budget
    assert combined_pool_size(48, 8, 4) == 12  # a quarter of the candidates, not 32 of 48
    assert combined_pool_size(10, 8, 4) == 8  # never below the budget
    assert combined_pool_size(5, 8, 4) == 5


def _calibration_frame(n_labeled, seed=0):
    """Labeled rows whose error_rate follows unc_margin and runs against unc_score_entropy."""
    rng = np.random.default_rng(seed)
    n_unl = 60
    n = n_labeled + n_unl
    margin = rng.uniform(size=n)
    frame = pd.DataFrame({
        "sample_id": [f"s{i:03d}" for i in range(n)], "split": ["val"] * n_labeled + ["unlabeled"] * n_unl,
        "unc_margin": margin, "unc_score_entropy": 1.0 - margin + 0.01 * rng.uniform(size=n),
        "unc_num_detections": rng.integers(1, 60, n).astype(float),  # descriptive: not an uncertainty
        "error_rate": np.where(np.arange(n) < n_labeled, margin ** 2, np.nan),
    })
    return frame, rng.normal(size=(n, 8)).astype(np.float32)


def test_combined_weights_each_uncertainty_by_how_it_tracks_the_labeled_errors():
    frame, emb = _calibration_frame(n_labeled=30)
    res = select_for_labeling(frame, emb, budget=5, strategy="combined")
    note = res.provenance["notes"][0]
    assert "Spearman correlation with error_rate on 30 val samples" in note
    assert "unc_margin 1.00" in note and "unc_score_entropy 0.00" in note and "unc_num_detections" not in note
    unl = frame[frame["split"] == "unlabeled"]
    pool = combined_pool_size(len(unl), 5, 4.0)  # 15
    assert set(res.sample_ids) <= set(unl.nlargest(pool, "unc_margin")["sample_id"])
    assert all(r.startswith("margin uncertainty") for r in res.picks["reason"])
    # train rows whose errors track the other column: the val split decides while it has enough rows
    trained = frame.copy()
    extra = trained.iloc[:30].assign(split="train", sample_id=[f"t{i:03d}" for i in range(30)],
                                     error_rate=1.0 - trained["unc_margin"].iloc[:30])
    both = pd.concat([trained, extra], ignore_index=True)
    res_both = select_for_labeling(both, np.concatenate([emb, emb[:30]]), budget=5, strategy="combined")
    assert "on 30 val samples" in res_both.provenance["notes"][0] and "unc_margin 1.00" in res_both.provenance["notes"][0]
    few_val = both[~((both["split"] == "val") & (both.index >= 5) & (both.index < 30))]
    res_train = select_for_labeling(few_val, np.concatenate([emb, emb[:30]])[few_val.index], budget=5,
                                    strategy="combined")
    assert "on 35 labeled samples" in res_train.provenance["notes"][0]  # 5 val + 30 train
    # too few labeled rows to measure anything: equal weights, said so
    few, emb_few = _calibration_frame(n_labeled=5)
    res_few = select_for_labeling(few, emb_few, budget=5, strategy="combined")
    assert "equal weights" in res_few.provenance["notes"][0]
    # only a descriptive unc_ column: nothing to weight, diversity with a note
    bare = frame[["sample_id", "split", "unc_num_detections"]]
    res_bare = select_for_labeling(bare, emb, budget=5, strategy="combined")
    assert any("fell back to diversity" in n for n in res_bare.provenance["notes"])


def test_missing_column_budget_and_unknown_strategy_errors():
    frame, emb = _frame()
    with pytest.raises(ValueError, match="--label-strategy diversity"):
        select_for_labeling(frame.drop(columns=["unc_margin"]), emb, strategy="margin")
    with pytest.raises(ValueError, match="valid: "):
        select_for_labeling(frame, emb, strategy="random-ish")
    with pytest.raises(ValueError, match="positive integer"):
        select_for_labeling(frame, emb, budget=0)


def test_budget_above_candidates_is_capped_and_no_candidates_gives_empty():
    frame, emb = _frame(n=30)
    assert len(select_for_labeling(frame, emb, budget=99).picks) == 10
    labeled = frame[frame["split"] != "unlabeled"]
    res = select_for_labeling(labeled, emb[labeled.index], budget=5)
    assert res.picks.empty and "reason" in res.picks.columns


def test_label_exports_csv_coco_and_crops(tmp_path):
    frame, emb = _frame()
    res = select_for_labeling(frame, emb, budget=4, strategy="entropy", model_hash="m1")
    paths = write_label_picks(tmp_path, res, frame, crop_provider=lambda sid: [np.zeros((8, 9, 3), np.uint8)])
    csv = pd.read_csv(paths["csv"])
    assert csv["sample_id"].tolist() == res.sample_ids
    coco = json.loads(paths["coco"].read_text())
    assert [im["file_name"] for im in coco["images"]] == [f"{s}.jpg" for s in res.sample_ids]
    assert coco["annotations"] == [] and {c["name"] for c in coco["categories"]} == {"Tote", "Object"}
    first = coco["images"][0]
    assert first["width"] == 2448 and first["id"] == 1 and first["rank"] == 1  # image id = rank
    assert first["dataset_image_id"] == frame.set_index("sample_id").loc[res.sample_ids[0], "image_id"]
    assert [im["score"] for im in coco["images"]] == pytest.approx(res.picks["score"].tolist())
    assert json.loads(paths["provenance"].read_text())["model_hash"] == "m1"
    assert len(list(paths["crops"].glob("*.jpg"))) == 4


@pytest.mark.parametrize("strategy", sorted(LABEL_STRATEGIES))
@pytest.mark.parametrize("case", ["full", "missing_values", "no_labeled_data"])
def test_score_never_increases_with_the_rank(strategy, case):
    """The exported score is what the ranking used: rank 1 has the highest (the demo run had
    rank 1 at 0.43 and rank 3 at 1.01 when the combined strategy re-ordered by k-center)."""
    frame, emb = _frame(n=240, seed=3)
    if case == "missing_values":
        unl = frame.index[frame["split"] == "unlabeled"]
        frame.loc[unl[::3], [c for c in frame.columns if c.startswith("unc_")]] = np.nan
    if case == "no_labeled_data":
        if strategy == "loss_neighbourhood":
            pytest.skip("needs labeled samples (raises, tested elsewhere)")
        frame["split"] = "unlabeled"
    res = select_for_labeling(frame, emb, budget=25, strategy=strategy)
    score = res.picks["score"].to_numpy(np.float64)
    finite = np.isfinite(score)
    assert finite.sum() >= 15
    assert not (~finite[:-1] & finite[1:]).any(), "a missing score ranks above a present one"
    s = score[finite]
    assert (np.diff(s) <= 1e-9).all(), f"scores rise along the rank: {np.round(s, 3).tolist()}"


# ------------------------------------------------------------------ pruning

def test_water_fill_is_even_and_exact():
    assert water_fill([10, 1, 10, 3], 8).tolist() == [3, 1, 2, 2]  # level 2, one left over to the largest
    assert water_fill([10, 1, 10, 3], 3).tolist() == [1, 0, 1, 1]  # fewer slots than strata: largest first
    assert (water_fill([5, 5, 5, 5], 4) == 1).all()  # every stratum gets one before any gets two
    assert water_fill([2, 2], 10).tolist() == [2, 2] and water_fill([5], 0).tolist() == [0]


def test_near_duplicates_walk_order():
    unit = np.array([[1, 0], [1, 0], [0, 1], [0.999, 0.0447]], float)
    unit /= np.linalg.norm(unit, axis=1, keepdims=True)
    partner, sim = near_duplicates(unit, np.array([3, 0, 1, 2]), 0.99)
    assert partner.tolist() == [3, 0, -1, -1] and sim[1] == pytest.approx(1.0)


def _clusters(n_per=100, k=3, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(k, 16)) * 6
    emb = np.concatenate([c + rng.normal(size=(n_per, 16)) * rng.uniform(0.3, 2.0, size=(n_per, 1)) for c in centres])
    labels = np.repeat(np.arange(k), n_per)
    frame = pd.DataFrame({"sample_id": [f"t{i}" for i in range(len(emb))], "split": "train"})
    return frame, emb.astype(np.float32), labels


@pytest.mark.parametrize("keep_fraction", [0.3, 0.5, 0.8])
@pytest.mark.parametrize("prefer", ["balanced", "hard", "easy"])
def test_pruning_keeps_the_fraction_per_cluster_and_covers_every_band(keep_fraction, prefer):
    frame, emb, labels = _clusters()
    res = select_for_pruning(frame, emb, labels, keep_fraction=keep_fraction, n_bands=4, prefer=prefer,
                             dedup_threshold=None)
    d = res.decisions
    for cid, grp in d.groupby("cluster"):
        assert grp["keep"].sum() == round(keep_fraction * len(grp))
        for band, g in grp.groupby("band"):
            assert g["keep"].any(), f"cluster {cid} band {band} lost all its samples"
    assert d["reason"].str.startswith(("kept:", "dropped:")).all()
    assert len(res.keep_ids) + len(res.drop_ids) == len(frame)


def test_band_numbers_are_one_based_in_the_column_the_reasons_and_the_summary():
    frame, emb, labels = _clusters()
    res = select_for_pruning(frame, emb, labels, keep_fraction=0.5, n_bands=4, dedup_threshold=None)
    d = res.decisions
    assert set(d["band"]) == {1, 2, 3, 4}
    named = d["reason"].str.extract(r"distance band (\d)/4")[0].astype(int)
    assert (named == d["band"]).all()
    nearest = d.groupby("cluster")["distance"].idxmin()
    assert (d.loc[nearest, "band"] == 1).all() and (d.loc[d.groupby("cluster")["distance"].idxmax(), "band"] == 4).all()
    summary = res.summary.set_index("cluster")
    for b in range(1, 5):
        kept = d[d["keep"] & (d["band"] == b)].groupby("cluster").size().reindex(summary.index, fill_value=0)
        assert (summary[f"kept_band_{b}"] == kept).all()
    assert "kept_band_0" not in summary.columns and "size_band_0" not in summary.columns


def test_hard_preference_keeps_farther_samples_than_easy():
    frame, emb, labels = _clusters()
    hard = select_for_pruning(frame, emb, labels, keep_fraction=0.5, prefer="hard").decisions
    easy = select_for_pruning(frame, emb, labels, keep_fraction=0.5, prefer="easy").decisions
    assert hard.loc[hard["keep"], "distance"].mean() > easy.loc[easy["keep"], "distance"].mean()


def test_near_duplicates_are_dropped_first_and_one_copy_survives():
    frame, emb, labels = _clusters()
    emb[1:4] = emb[0] + 1e-4 * np.arange(1, 4)[:, None]  # 4 copies of one sample
    res = select_for_pruning(frame, emb, labels, keep_fraction=0.9, dedup_threshold=0.99)
    d = res.decisions.set_index("sample_id")
    copies = d.loc[["t0", "t1", "t2", "t3"]]
    assert (~copies["keep"]).sum() == 3 and copies["keep"].sum() == 1
    assert copies.loc[~copies["keep"], "reason"].str.startswith("near-duplicate of").all()
    assert res.summary.loc[res.summary["cluster"] == 0, "duplicates_dropped"].item() == 3
    assert d.loc[d["cluster"] == 0, "keep"].sum() == 90  # fraction still exact


def test_pruning_only_train_rows_subgroups_and_clusters_by_default():
    frame, emb, labels = _clusters(n_per=60)
    frame.loc[::4, "split"] = "val"
    res = select_for_pruning(frame, emb, None, keep_fraction=0.5, n_clusters=3, subgroup_size=20)
    assert set(res.decisions["sample_id"]) == set(frame.loc[frame["split"] == "train", "sample_id"])
    assert res.decisions["subgroup"].max() >= 1
    with pytest.raises(ValueError, match="keep_fraction"):
        select_for_pruning(frame, emb, labels, keep_fraction=0)
    with pytest.raises(ValueError, match="one label per frame row"):
        select_for_pruning(frame, emb, labels[:5])


def test_prune_exports_and_pruned_coco(tmp_path):
    frame, emb, labels = _clusters(n_per=10, k=2)
    res = select_for_pruning(frame, emb, labels, keep_fraction=0.5)
    paths = write_prune_lists(tmp_path, res)
    assert len(pd.read_csv(paths["keep"])) == 10 and len(pd.read_csv(paths["drop"])) == 10
    coco = {"info": {"v": 1}, "categories": [{"id": 1, "name": "Tote"}, {"id": 2, "name": "Object"}],
            "images": [{"id": i, "file_name": f"t{i}.jpg", "width": 4, "height": 4} for i in range(20)],
            "annotations": [{"id": 10 * i + j, "image_id": i, "category_id": 2} for i in range(20) for j in range(2)]}
    src = tmp_path / "train.json"
    src.write_text(json.dumps(coco))
    counts = write_pruned_coco(src, tmp_path / "out" / "train.json", res.keep_ids + ["ghost"])
    out = json.loads((tmp_path / "out" / "train.json").read_text())
    assert counts == {"images_in": 20, "images_kept": 10, "annotations_in": 40, "annotations_kept": 20,
                      "keep_ids_not_found": 1}
    assert {im["file_name"][:-4] for im in out["images"]} == set(res.keep_ids)
    assert out["categories"] == coco["categories"] and out["info"] == coco["info"]
    with pytest.raises(DatasetError, match="train.json"):
        write_pruned_coco(tmp_path / "nope.json", tmp_path / "x.json", [])


# ------------------------------------------------------------------ galleries (report.py)

def test_gallery_ranks_by_count_then_loss_and_skips_unavailable_images(tmp_path):
    from armbench_segmentation.analysis.report import ErrorView, build_gallery, worst_samples
    from armbench_segmentation.errors import SampleError

    frame = pd.DataFrame({"sample_id": ["a", "b", "c", "d", "e"], "over_segmented_count": [1, 3, 0, 3, None],
                          "loss": [0.9, 0.2, 1.0, 0.5, 0.9]})
    assert worst_samples(frame, "over", 10)["sample_id"].tolist() == ["d", "b", "a"]
    assert worst_samples(frame, "under").empty  # column missing: no gallery, no error
    counts = dict(zip(frame["sample_id"], frame["over_segmented_count"]))

    def provider(sid, kind):
        assert kind == "over_segmented"
        if sid == "b":
            raise SampleError(sid, "image missing")
        ids = tuple(range(int(counts[sid])))
        return ErrorView(np.full((50, 80, 3), 200, np.uint8), kind, ids, (7,), ids)

    g = build_gallery(frame, "over", provider, n=3, out_dir=tmp_path, max_side=40)
    assert [it.sample_id for it in g.items] == ["d", "a"] and "1 samples skipped" in g.notes[0]
    assert g.items[0].caption == "#1 d: 3 over-segmented, loss 0.50"
    assert sorted(p.name for p in (tmp_path / "galleries" / "over").iterdir()) == ["01_d.jpg", "03_a.jpg"]
    assert g.items[0].count == len(g.items[0].drawn_counted) == 3
    with pytest.raises(ValueError, match="gallery kind"):
        worst_samples(frame, "sideways")
    with pytest.raises(RuntimeError, match="inconsistent"):  # a view that draws other errors than it counts
        build_gallery(frame, "over", lambda sid, kind: ErrorView(np.zeros((5, 5, 3), np.uint8), kind, (), (), ()))


def test_bare_uncertainty_names_from_the_core_work():
    frame, emb = _frame()
    bare = frame.rename(columns={c: c[4:] for c in frame.columns if c.startswith("unc_")})
    a = select_for_labeling(bare, emb, budget=4, strategy="entropy")
    b = select_for_labeling(frame, emb, budget=4, strategy="entropy")
    assert a.sample_ids == b.sample_ids and "mask entropy" in a.picks["reason"].iloc[0]
