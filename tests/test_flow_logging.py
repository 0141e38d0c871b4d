from flows.rlhf import _worth_logging


def test_progress_bars_are_logged_per_decile_other_lines_always():
    shown: dict[str, int] = {}
    lines = ["reward:   0%|          | 0/60 [00:00<?, ?step/s]", "reward:   5%|▌         | 3/60",
             "reward:  10%|█         | 6/60", "reward:  11%|█         | 7/60", "[reward] warning: 3 truncated",
             "Tokenizing train dataset:  50%|█████ | 5/10", "reward: 100%|██████████| 60/60", "reward: 100%|█| 60/60"]
    assert [_worth_logging(line, shown) for line in lines] == [True, False, True, False, True, True, True, False]
