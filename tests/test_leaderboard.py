"""The leaderboard's ties: read from the paired difference on the same test images, not from overlapping
per-model intervals (which stay the fallback for a model without per-image results)."""

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mat_dist.evaluate.leaderboard import Entry, ties, write_leaderboard
from mat_dist.evaluate.metrics import separated, union_summary
from mat_dist.evaluate.model_source import ModelSource
from mat_dist.evaluate.suite import load_suite


def _entry(tmp_path, label: str, held: range, n: int = 300, *, keep_results: bool = True) -> Entry:
    """A model attacked by one l_inf attack on n test images, robust on ``held``."""
    rows = {"example_id": list(range(n)), "attack": ["pgd_linf"] * n, "norm": ["linf"] * n,
            "success": [i not in held for i in range(n)], "clean_correct": [True] * n}
    folder = tmp_path / label
    folder.mkdir()
    if keep_results:
        pq.write_table(pa.table(rows), folder / "results.parquet")
    return Entry(source=ModelSource(kind="checkpoint", location=str(folder), label=label),
                 summary=union_summary(rows), output=folder, white_box=True)


def test_pairing_separates_two_models_whose_intervals_overlap(tmp_path):
    # a holds every image b holds and 15 more: 25% against 20% of 300 images
    a, b = _entry(tmp_path, "a", range(0, 75)), _entry(tmp_path, "b", range(0, 60))
    assert not separated(a.summary["intervals"]["all_attacks"], b.summary["intervals"]["all_attacks"])
    write_leaderboard([b, a], tmp_path / "board", suite=load_suite("field"))
    board = pq.read_table(tmp_path / "board" / "leaderboard.parquet").to_pylist()
    assert [r["model"] for r in board] == ["a", "b"]
    assert board[0]["ties_with"] == "" and board[1]["ties_with"] == ""  # paired: not a tie
    assert board[0]["vs_above"] is None
    assert board[1]["vs_above"] == pytest.approx(-0.05) and board[1]["vs_above_hi"] < 0
    text = (tmp_path / "board" / "leaderboard.md").read_text()
    assert "| -5.0 [" in text and "No per-image results" not in text


def test_models_broken_on_different_images_stay_a_tie(tmp_path):
    # the same 20% robust accuracy, on disjoint images: the pairing cannot separate what is not different
    a, b = _entry(tmp_path, "a", range(0, 60)), _entry(tmp_path, "b", range(60, 120))
    assert ties(a, [a, b], {"a": _union(a), "b": _union(b)}) == ["b"]


def test_without_per_image_results_the_wilson_overlap_decides(tmp_path):
    a, b = _entry(tmp_path, "a", range(0, 75)), _entry(tmp_path, "b", range(0, 60), keep_results=False)
    write_leaderboard([a, b], tmp_path / "board", suite=load_suite("field"))
    board = pq.read_table(tmp_path / "board" / "leaderboard.parquet").to_pylist()
    assert board[0]["ties_with"] == "b" and board[1]["vs_above"] is None  # overlapping Wilson intervals
    assert "No per-image results for b" in (tmp_path / "board" / "leaderboard.md").read_text()


def _union(e: Entry):
    from mat_dist.evaluate.paired import read_seed_unions

    return read_seed_unions([e.output])
