"""The per-sample audit table: influence on every class, suspects and ranks; its CSVs and console summary."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from lightning_pareto.audit.suspects import likely_labels, suspect_scores

__all__ = ["AuditTable", "TOP_COLUMNS", "audit_table"]

# Columns of top_samples.csv: one row per (class, kind, place).
TOP_COLUMNS = ("class", "kind", "place", "index", "label", "influence", "suspect", "likely_label")


def descending_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks, 1 = the largest value; ties in index order; NaN ranked last.

    Example:
        >>> descending_ranks(np.array([0.5, np.nan, 2.0, 0.5]))
        array([2, 4, 1, 3])
    """
    key = np.where(np.isnan(values), np.inf, -np.asarray(values, dtype=np.float64))
    ranks = np.empty(key.size, dtype=np.int64)
    ranks[np.argsort(key, kind="stable")] = np.arange(1, key.size + 1)
    return ranks


@dataclass
class AuditTable:
    """Category-wise influence of every training sample with the suspect rule applied.

    Attributes:
        influence: ``(n, K)`` float64, ``I[i, c] > 0``: sample i helps class c (row i = dataset index i).
        labels: ``(n,)`` int64 training labels as the model saw them.
        class_names: ``K`` names.
        scores: ``(n,)`` :func:`~lightning_pareto.audit.suspect_scores` (NaN for non-finite rows).
        suspect: ``(n,)`` bool, ``scores > 0``.
        likely: ``(n,)`` int64 :func:`~lightning_pareto.audit.likely_labels` (meaningful for suspects).
        margin: The rule's margin.
        min_harm: The rule's harm floor.
    """

    influence: np.ndarray
    labels: np.ndarray
    class_names: list[str]
    scores: np.ndarray
    suspect: np.ndarray
    likely: np.ndarray
    margin: float
    min_harm: float

    @property
    def num_classes(self) -> int:
        """Number of classes ``K``."""
        return len(self.class_names)

    def columns(self) -> list[str]:
        """Header of ``samples.csv``."""
        names = self.class_names
        return [
            "index",
            "label",
            *(f"influence_{n}" for n in names),
            "suspect",
            "suspect_score",
            "likely_label",
            *(f"rank_{n}" for n in names),
            "suspect_rank",
        ]

    def ranks(self) -> np.ndarray:
        """``(n, K)`` int64: rank of each sample among all for each class, 1 = most helpful to that class."""
        return np.stack([descending_ranks(self.influence[:, c]) for c in range(self.num_classes)], axis=1)

    def top(self, c: int, k: int, kind: Literal["helpful", "harmful"]) -> np.ndarray:
        """Indices of the ``k`` samples that help (or hurt) class ``c`` most; harmful ones with suspects first.

        Samples with non-finite influence are never listed.
        """
        column = self.influence[:, c]
        finite = np.flatnonzero(np.isfinite(column))
        if kind == "helpful":
            chosen = finite[np.argsort(-column[finite], kind="stable")[:k]]
            return chosen[column[chosen] > 0]
        if kind != "harmful":
            raise ValueError(f"kind must be 'helpful' or 'harmful', got {kind!r}.")
        chosen = finite[np.argsort(column[finite], kind="stable")[:k]]
        chosen = chosen[column[chosen] < 0]
        return np.concatenate([chosen[self.suspect[chosen]], chosen[~self.suspect[chosen]]])

    def write_samples_csv(self, path: str | Path) -> Path:
        """``samples.csv``: one row per training sample, columns :meth:`columns`; returns the path."""
        path = Path(path)
        ranks, suspect_ranks = self.ranks(), descending_ranks(self.scores)
        names = self.class_names
        with path.open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(self.columns())
            for i in range(self.labels.size):
                writer.writerow(
                    [
                        i,
                        names[self.labels[i]],
                        *(f"{v:.6g}" for v in self.influence[i]),
                        int(self.suspect[i]),
                        f"{self.scores[i]:.6g}",
                        names[self.likely[i]] if self.suspect[i] else "",
                        *ranks[i],
                        suspect_ranks[i],
                    ]
                )
        return path

    def top_rows(self, k: int) -> list[dict[str, object]]:
        """Rows of ``top_samples.csv`` (:data:`TOP_COLUMNS`): per class the ``k`` most helpful, then most harmful."""
        names, rows = self.class_names, []
        for c, name in enumerate(names):
            for kind in ("helpful", "harmful"):
                for place, i in enumerate(self.top(c, k, kind), start=1):  # type: ignore[arg-type]
                    rows.append(
                        {
                            "class": name,
                            "kind": kind,
                            "place": place,
                            "index": int(i),
                            "label": names[self.labels[i]],
                            "influence": f"{self.influence[i, c]:.6g}",
                            "suspect": int(self.suspect[i]),
                            "likely_label": names[self.likely[i]] if self.suspect[i] else "",
                        }
                    )
        return rows

    def write_top_csv(self, path: str | Path, k: int) -> Path:
        """``top_samples.csv`` from :meth:`top_rows`; returns the path."""
        path = Path(path)
        with path.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=TOP_COLUMNS)
            writer.writeheader()
            writer.writerows(self.top_rows(k))
        return path

    def summary(self) -> str:
        """Per class: training samples labelled with it, samples that hurt it, suspects labelled with it, and
        suspects whose likely true label it is."""
        width = max(len("class"), *(len(n) for n in self.class_names))
        header = f"{'class':<{width}}  {'samples':>7}  {'harmful':>7}  {'suspects':>8}  {'likely':>6}"
        lines = [header]
        for c, name in enumerate(self.class_names):
            labelled = self.labels == c
            harmful = int((self.influence[:, c] < 0).sum())
            lines.append(
                f"{name:<{width}}  {int(labelled.sum()):>7}  {harmful:>7}  {int((self.suspect & labelled).sum()):>8}  "
                f"{int((self.suspect & (self.likely == c)).sum()):>6}"
            )
        lines.append(f"{'all':<{width}}  {self.labels.size:>7}  {'':>7}  {int(self.suspect.sum()):>8}")
        return "\n".join(lines)


def audit_table(
    influence: np.ndarray,
    labels: np.ndarray,
    class_names: Sequence[str] | None = None,
    margin: float = 1.0,
    min_harm: float = 3.0,
) -> AuditTable:
    """Apply the suspect rule to a category-wise influence matrix.

    Args:
        influence: ``(n, K)`` from :func:`lightning_pareto.influence.category_influence` (tensor or array).
        labels: ``(n,)`` training labels (tensor or array).
        class_names: ``K`` names (default ``"0"`` ... ``"K-1"``).
        margin: The suspect rule's margin (:func:`~lightning_pareto.audit.suspect_scores`).
        min_harm: The suspect rule's harm floor.

    Returns:
        The :class:`AuditTable`.

    Example:
        >>> influence = np.array([[2.0, 1.0], [1.0, -3.0], [-1.0, 2.0]])
        >>> table = audit_table(influence, np.array([0, 0, 1]), ["a", "b"], min_harm=1.0)
        >>> table.suspect.tolist(), [table.class_names[c] for c in table.likely[table.suspect]]
        ([False, True, False], ['b'])
    """
    influence = np.asarray(influence, dtype=np.float64)
    labels = np.asarray(labels).astype(np.int64)
    scores = suspect_scores(influence, labels, margin, min_harm)
    names = [str(c) for c in range(influence.shape[1])] if class_names is None else [str(n) for n in class_names]
    if len(names) != influence.shape[1]:
        raise ValueError(f"class_names has {len(names)} entries but influence has {influence.shape[1]} columns.")
    with np.errstate(invalid="ignore"):
        suspect = scores > 0
    return AuditTable(
        influence, labels, names, scores, suspect, likely_labels(influence, labels), float(margin), float(min_harm)
    )
