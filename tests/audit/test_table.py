"""The samples table and its CSVs: shape, columns, ranks, top lists, console summary."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from lightning_pareto.audit import TOP_COLUMNS, audit_table, write_audit
from lightning_pareto.audit.table import descending_ranks

NAMES = ["cat", "dog", "bird"]


@pytest.fixture
def table():  # noqa: ANN201
    rng = np.random.default_rng(1)
    influence = rng.normal(size=(40, 3))
    labels = rng.integers(0, 3, 40)
    influence[np.arange(40), labels] = np.abs(influence[np.arange(40), labels]) + 0.5
    influence[[3, 17], 2] = [-12.0, -10.0]  # two samples that hurt "bird" badly: suspects unless labelled bird
    labels[[3, 17]] = [0, 1]
    return audit_table(influence, labels, NAMES)


def _read(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with path.open() as handle:
        reader = csv.DictReader(handle)
        return list(reader.fieldnames or []), list(reader)


def test_samples_csv_has_one_row_per_sample_and_the_documented_columns(table, tmp_path: Path) -> None:  # noqa: ANN001
    header, rows = _read(table.write_samples_csv(tmp_path / "samples.csv"))
    assert header == [
        "index",
        "label",
        "influence_cat",
        "influence_dog",
        "influence_bird",
        "suspect",
        "suspect_score",
        "likely_label",
        "rank_cat",
        "rank_dog",
        "rank_bird",
        "suspect_rank",
    ]
    assert len(rows) == 40
    assert [int(r["index"]) for r in rows] == list(range(40))
    assert [r["label"] for r in rows] == [NAMES[y] for y in table.labels]
    values = np.array([[float(r[f"influence_{n}"]) for n in NAMES] for r in rows])
    np.testing.assert_allclose(values, table.influence, rtol=1e-5)
    for c, name in enumerate(NAMES):  # ranks: a permutation, 1 = the largest influence on that class
        ranks = np.array([int(r[f"rank_{name}"]) for r in rows])
        assert sorted(ranks) == list(range(1, 41))
        assert np.array_equal(np.argsort(ranks), np.argsort(-table.influence[:, c], kind="stable"))
    suspects = {int(r["index"]) for r in rows if r["suspect"] == "1"}
    assert {3, 17} <= suspects
    assert {rows[i]["likely_label"] for i in (3, 17)} == {"bird"}
    assert all(r["likely_label"] == "" for r in rows if r["suspect"] == "0")
    assert {int(r["suspect_rank"]) for r in rows if int(r["index"]) in (3, 17)} == {1, 2}


def test_descending_ranks_put_ties_in_index_order_and_nan_last() -> None:
    assert descending_ranks(np.array([1.0, 3.0, np.nan, 3.0])).tolist() == [3, 1, 4, 2]


def test_top_lists_are_extremes_with_suspects_first_among_the_harmful(table, tmp_path: Path) -> None:  # noqa: ANN001
    column = table.influence[:, 2]
    helpful = table.top(2, 5, "helpful")
    assert helpful.tolist() == np.argsort(-column)[:5].tolist()
    harmful = table.top(2, 5, "harmful")
    assert set(harmful.tolist()) == set(np.argsort(column)[:5].tolist())
    flagged = table.suspect[harmful]
    assert not np.any(np.diff(flagged.astype(int)) > 0)  # no suspect after a non-suspect
    header, rows = _read(write_audit(table, tmp_path, top_k=5)["top_samples"])
    assert header == list(TOP_COLUMNS)
    assert len(rows) == sum(table.top(c, 5, k).size for c in range(3) for k in ("helpful", "harmful"))
    bird_harmful = [int(r["index"]) for r in rows if r["class"] == "bird" and r["kind"] == "harmful"]
    assert bird_harmful == harmful.tolist()


def test_summary_counts_harmful_samples_and_suspects_per_class(table) -> None:  # noqa: ANN001
    lines = table.summary().splitlines()
    assert lines[0].split() == ["class", "samples", "harmful", "suspects", "likely"]
    bird = lines[3].split()
    assert bird[0] == "bird" and int(bird[2]) == int((table.influence[:, 2] < 0).sum())
    assert int(bird[4]) == int((table.suspect & (table.likely == 2)).sum()) >= 2
    assert lines[-1].split() == ["all", "40", str(int(table.suspect.sum()))]


def test_write_audit_draws_one_thumbnail_grid_per_class_and_logs_it(table, tmp_path: Path) -> None:  # noqa: ANN001
    logged = []

    class Writer:
        def add_image(self, tag: str, image: object, global_step: int | None = None, dataformats: str = "") -> None:
            logged.append(tag)

    images = np.random.default_rng(0).uniform(size=(40, 4, 4))
    written = write_audit(table, tmp_path, top_k=3, images=images, writer=Writer())
    assert sorted(p.name for p in written.values()) == [
        "samples.csv",
        "top_bird.png",
        "top_cat.png",
        "top_dog.png",
        "top_samples.csv",
    ]
    assert all(p.stat().st_size > 1000 for p in written.values() if p.suffix == ".png")
    assert logged == [f"audit/top_samples/{n}" for n in NAMES]
    with pytest.raises(ValueError, match="top_k"):
        write_audit(table, tmp_path, top_k=0)
