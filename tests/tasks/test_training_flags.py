"""Training-only flag checks run when fairseq-train builds the model, not when a checkpoint loads."""

import pytest

from taskmoe_testlib import setup_task


def test_capacity_factor_not_positive_is_refused_for_training(toy_data):
    with pytest.raises(ValueError, match=r"--moe-capacity-factor must be > 0 .*--moe-dropless"):
        setup_task(toy_data, extra=["--moe-capacity-factor", "0"])
    task = setup_task(toy_data, extra=["--moe-capacity-factor", "0", "--moe-dropless"])
    assert task.moe_task_names
