"""Win rates with their standard error and bootstrap interval (components/maths/stats.py), by hand."""

from __future__ import annotations

import math

import pytest

from components.maths.stats import (bootstrap_interval, compare, difference_se, paired_difference, prompt_scores, quantile, standard_error, win_rate,
                                    win_rate_summary)


def test_win_rate_counts_wins_ties_half_and_losses_by_hand():
    assert win_rate([1.0, 0.5, 0.2, 0.9], [0.5, 0.5, 0.3, 0.1]) == (1 + 0.5 + 0 + 1) / 4
    assert win_rate([0.2], [0.3]) == 0.0  # a flipped comparison would say 1
    assert win_rate([0.3], [0.2]) == 1.0
    assert math.isnan(win_rate([], []))
    assert [compare(1, 0), compare(0, 0), compare(0, 1)] == [1.0, 0.5, 0.0]


def test_sampled_answers_compare_every_pair_of_a_prompt():
    # prompt 1: A [1, 0] vs B [0.5]: 1 and 0 -> 0.5; prompt 2: A [0.7] vs B [0.7, 0.2]: tie and win -> 0.75
    assert prompt_scores([[1.0, 0.0], [0.7]], [[0.5], [0.7, 0.2]]) == [0.5, 0.75]
    with pytest.raises(ValueError, match="2 prompts for A but 1 for B"):
        prompt_scores([[1.0], [0.0]], [[0.5]])


def test_standard_error_and_quantile_by_hand():
    # mean 0.7; squared deviations .09 .04 .49 .09 .09 sum .8; var (ddof 1) .2; se = sqrt(.2 / 5) = .2
    assert standard_error([1, 0.5, 0, 1, 1]) == pytest.approx(0.2)
    assert math.isnan(standard_error([1.0]))
    assert quantile([0.0, 1.0, 2.0, 3.0], 0.5) == 1.5 and quantile([0.0, 1.0, 2.0, 3.0], 0.25) == 0.75


def test_bootstrap_interval_is_seeded_and_right_on_hand_cases():
    assert bootstrap_interval([0.5] * 20, seed=3) == (0.5, 0.5)  # nothing varies: no width
    # two values 0 and 1: a resample's mean is 0, 0.5 or 1 with probability 1/4, 1/2, 1/4, so the
    # 2.5% and 97.5% quantiles of many resamples are 0 and 1
    assert bootstrap_interval([0.0, 1.0], n_boot=4000, seed=0) == (0.0, 1.0)
    xs = [1.0] * 60 + [0.0] * 40
    assert bootstrap_interval(xs, seed=7) == bootstrap_interval(xs, seed=7)
    lo, hi = bootstrap_interval(xs, seed=7)
    assert lo < 0.6 < hi and hi - lo == pytest.approx(4 * 0.049, abs=0.03)  # about +-1.96 se, se = 0.049


def test_summary_of_a_candidate_identical_to_the_reference():
    s = win_rate_summary([0.5] * 180)
    assert s == {"rate": 0.5, "se": 0.0, "lo": 0.5, "hi": 0.5, "n": 180}


def test_paired_difference_by_hand():
    # d = [1, 2, 2]: mean 5/3; sd = sqrt(((1 - 5/3)^2 + 2 (2 - 5/3)^2) / 2) = sqrt(1/3); se = sd / sqrt(3) = 1/3
    d = paired_difference([1.0, 2.0, 3.0], [0.0, 0.0, 1.0])
    assert d["n"] == 3 and d["mean"] == pytest.approx(5 / 3) and d["se"] == pytest.approx(1 / 3)
    same = paired_difference([0.5, 2.0], [0.5, 2.0])
    assert same["mean"] == 0.0 and same["se"] == 0.0
    assert math.isnan(paired_difference([1.0], [0.0])["se"])
    with pytest.raises(ValueError, match="2 values for A but 1 for B"):
        paired_difference([1.0, 2.0], [1.0])


def test_difference_se_by_hand():
    # 0.3² / 9 = 0.01 and 0.4² / 16 = 0.01: sqrt(0.02)
    assert difference_se(0.3, 10, 0.4, 17) == pytest.approx(math.sqrt(0.02))
    # A = [0, 1] (population sd 0.5, se of its mean 0.5) against a constant B: the se of A's mean
    assert difference_se(0.5, 2, 0.0, 5) == pytest.approx(0.5)
    assert math.isnan(difference_se(0.5, 1, 0.2, 10))
