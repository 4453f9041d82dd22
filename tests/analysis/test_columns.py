"""The column table: one definition per column, the README generated from it."""

from __future__ import annotations

from pathlib import Path

from armbench_segmentation.analysis.columns import INSTANCE_COLUMNS, SAMPLE_COLUMNS, describe, markdown_table
from armbench_segmentation.metrics.sample_evaluation import labeled_column_names

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_holds_the_generated_column_table():
    assert markdown_table() in README.read_text(encoding="utf-8"), \
        "README's column table is stale: paste analysis.columns.markdown_table() into it"


def test_every_evaluation_column_is_defined():
    for name in labeled_column_names():
        assert describe(name) is not None, name
    assert describe("meta_tote_color") is not None and describe("no_such_column") is None


def test_directions_are_known_and_loss_is_the_model_loss():
    assert {c.direction for c in SAMPLE_COLUMNS.values()} <= {"worse", "better", ""}
    assert "YOLOv5-seg" in SAMPLE_COLUMNS["loss"].definition and "1 - F1" in SAMPLE_COLUMNS["error_rate"].definition
    assert INSTANCE_COLUMNS[:2] == ("kind", "index")
