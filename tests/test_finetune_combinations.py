from segvol.finetune.objective import PROMPT_COMBINATIONS
from segvol.finetune.train import prompt_combinations


def test_all_six_combinations_by_default():
    assert prompt_combinations(2023, 7, 6) == tuple(range(len(PROMPT_COMBINATIONS)))


def test_a_subset_depends_only_on_seed_and_step():
    draws = [prompt_combinations(2023, step, 2) for step in range(60)]
    assert all(len(set(d)) == 2 and all(0 <= i < 6 for i in d) for d in draws)
    assert draws == [prompt_combinations(2023, step, 2) for step in range(60)]  # resume / DDP ranks agree
    assert len(set(draws)) > 5  # the subset changes from step to step
    assert {i for d in draws for i in d} == set(range(6))  # every combination gets trained
