"""The before/after table of the interventions."""

from __future__ import annotations

from lightning_pareto.callbacks._record import InterventionRecord
from lightning_pareto.callbacks._report import intervention_table


def test_table_shows_before_bad_after_and_the_change_against_the_detrimental_epoch() -> None:
    record = InterventionRecord(
        epoch=3,
        mode="course_correction",
        targets=[1],
        before=[0.5, None],
        after=[0.75, 0.5],
        bad=[0.25, 0.5],
        status="applied",
        seconds=1.5,
        weighted_epochs=[4],
    )
    table = intervention_table([record], ["cat", "dog"])
    assert "course_correction at epoch 3" in table and "* dog" in table
    rows = {line.split()[-5]: line.split()[-4:] for line in table.splitlines() if line.strip().startswith(("cat", "*"))}
    assert rows["cat"] == ["50.0", "25.0", "75.0", "+50.0"]  # before, bad, after, change against bad
    assert rows["dog"] == ["-", "50.0", "50.0", "+0.0"]  # a class missing before shows "-"
    skipped = InterventionRecord(epoch=1, mode="direct_improvement", targets=[0], before=None, reason="infeasible: x")
    assert "skipped (infeasible: x)" in intervention_table([skipped], ["cat", "dog"])
