"""Sample-level forgetting on hand-made per-item scores (counts worked out by hand)."""

from __future__ import annotations

import pytest

from ctbench.runs.item_forgetting import guessing_churn, item_forgetting, task_transitions


def test_same_accuracy_can_hide_churn() -> None:
    # Four items; ACC is 0.5 after every evaluation, but the solved items change.
    rows = [[1, 1, 0, 0], [0, 1, 1, 0], [0, 0, 1, 1]]
    first, second = task_transitions(rows)
    assert (first["forgotten"], first["learned"], first["solved"]) == (1, 1, 2)
    assert first["forgotten_rate"] == 0.5 and first["learned_rate"] == 0.5
    # Against each item's best earlier state: items 0 and 1 were solved once, both lost now.
    assert second["forgotten"] == 1 and second["learned"] == 1
    assert second["forgotten_since_best"] == 2
    assert second["forgotten_since_best_rate"] == pytest.approx(2 / 3)  # of items 0, 1, 2


def test_no_change_means_no_transitions_and_undefined_rates() -> None:
    (entry,) = task_transitions([[0, 0, 0], [0, 0, 0]])
    assert entry["forgotten"] == entry["learned"] == entry["forgotten_since_best"] == 0
    assert entry["forgotten_rate"] is None  # nothing was solved, so nothing could be forgotten
    assert entry["learned_rate"] == 0.0 and entry["forgotten_since_best_rate"] is None


def test_sampled_items_use_the_threshold_on_their_mean_score() -> None:
    # Means over samples: 0.625 → 0.375 is a 1 → 0 transition at 0.5; 0.5 counts as solved.
    (entry,) = task_transitions([[0.625, 0.25, 0.5], [0.375, 0.5, 0.75]])
    assert (entry["forgotten"], entry["learned"], entry["solved"]) == (1, 1, 2)
    (strict,) = task_transitions([[0.625, 0.25, 0.5], [0.375, 0.5, 0.75]], threshold=0.7)
    assert (strict["forgotten"], strict["learned"], strict["solved"]) == (0, 1, 1)


def test_chance_adjustment_subtracts_what_guessing_alone_would_churn() -> None:
    # 4-way choice, 10 items, 6 solved before: U = 10 * 0.4 / 0.75 = 16/3 unknown items,
    # each flipping either way with probability 1/4 * 3/4 = 3/16 -> 1.0 expected flip.
    assert guessing_churn(10, 0.6, 0.25) == pytest.approx(1.0)
    before = [1, 1, 1, 1, 1, 1, 0, 0, 0, 0]
    after = [0, 0, 1, 1, 1, 1, 1, 0, 0, 0]
    (entry,) = task_transitions([before, after], chance=0.25)
    assert (entry["forgotten"], entry["learned"]) == (2, 1)
    assert entry["forgotten_adjusted"] == pytest.approx(1.0)
    assert entry["learned_adjusted"] == pytest.approx(0.0)  # floored, never negative
    (plain,) = task_transitions([before, after])
    assert "forgotten_adjusted" not in plain  # only choice tasks get the adjustment


def test_guessing_churn_bounds() -> None:
    assert guessing_churn(8, 1.0, 0.25) == 0.0  # everything known: no luck involved
    # At chance accuracy every item is unknown: U = n, and U c (1 - c) flips are expected.
    assert guessing_churn(8, 0.25, 0.25) == pytest.approx(8 * 0.25 * 0.75)
    assert guessing_churn(8, 0.0, 0.25) == pytest.approx(8 * 0.25 * 0.75)  # U clipped to n
    assert guessing_churn(8, 0.5, 0.0) == 0.0


def test_run_summary() -> None:
    block = item_forgetting(
        {"a": [[1, 1], [1, 0], [0, 0]], "b": [[0, 0], [1, 0], [1, 1]]}, {"b": 0.5}
    )
    assert block["total_forgotten"] == 2 and block["total_learned"] == 2
    # a: both items were solved once, neither at the end -> 1.0; b: nothing forgotten -> 0.0.
    assert block["final_forgotten_since_best_rate"] == pytest.approx(0.5)
    assert "forgotten_adjusted" in block["tasks"]["b"][0]
    assert "forgotten_adjusted" not in block["tasks"]["a"][0]


def test_rows_must_score_the_same_items() -> None:
    with pytest.raises(ValueError, match="same items"):
        task_transitions([[1, 0], [1]])
