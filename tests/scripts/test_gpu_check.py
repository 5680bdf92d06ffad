"""scripts/gpu_check.py: the parts that can be checked without a GPU (its full dry run,
`python scripts/gpu_check.py --cpu`, trains four times and is left to a person)."""

import importlib.util

import pytest
import torch

from taskmoe_testlib import REPO

spec = importlib.util.spec_from_file_location("gpu_check", REPO / "scripts" / "gpu_check.py")
gpu_check = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gpu_check)

LOG = """\
2026-12-06 05:05:09 | INFO | train_inner | epoch 003:     12 / 89 loss=2.463, nll_loss=1.679, num_updates=190, lr=0.001
2026-12-06 05:05:10 | INFO | valid | epoch 003 | valid on 'valid' subset | loss 1.901 | nll_loss 0.9 | num_updates 190
2026-12-06 05:05:10 | INFO | train_inner | epoch 003:     22 / 89 loss=2.259, nll_loss=1.446, num_updates=200, lr=0.001
2026-12-06 05:05:10 | INFO | valid | epoch 003 | valid on 'valid' subset | loss 1.775 | nll_loss 0.857 | num_updates 200
2026-12-06 05:05:10 | INFO | train | epoch 003 | loss 2.334 | nll_loss 1.532 | num_updates 200
"""


def test_losses_reads_the_train_inner_line_at_the_last_update_and_the_last_valid(tmp_path):
    log = tmp_path / "train.log"
    log.write_text(LOG)
    # the epoch summary (2.334) averages only the updates since a resume: never compared
    assert gpu_check.losses(log) == {"train_loss": 2.259, "valid_loss": 1.775}
    log.write_text(LOG.replace("num_updates=200", "num_updates=199"))
    assert gpu_check.losses(log)["train_loss"] is None


def test_gpu_test_files_are_the_files_with_gpu_marked_tests():
    files = gpu_check.gpu_test_files()
    assert "tests/moe/test_moe_layer.py" in files
    assert all("mark.gpu" in (REPO / f).read_text() for f in files)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU refusal")
def test_without_cuda_it_refuses_with_exit_2(tmp_path, capsys):
    assert gpu_check.main(["--out", str(tmp_path / "o")]) == 2
    assert "no CUDA device" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_bench_targets_report_met_and_missed():
    rows = [{"dtype": "bf16", "tokens": 16384, "ours_ms": 1.2, "dense-2F_ms": 1.0},
            {"dtype": "fp32", "tokens": 16384, "ours_ms": 3.0, "fairscale_ms": 4.8}]
    got = gpu_check.bench_targets({"rows": rows})
    assert got["bf16_16k_ours_over_dense"]["met"] and abs(got["bf16_16k_ours_over_dense"]["value"] - 1.2) < 1e-9
    assert not got["fairscale_fp32_over_ours_bf16_16k"]["met"]  # 4.8 / 1.2 = 4x < 5x
    assert gpu_check.bench_targets(None) == {}
