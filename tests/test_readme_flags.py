"""The README's flag table is generated from the config dataclasses, never hand-edited."""

import subprocess
import sys

from taskmoe_testlib import REPO


def test_readme_flag_table_matches_config():
    out = subprocess.run([sys.executable, str(REPO / "scripts" / "sync_readme_flags.py"), "--check"],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]


def test_every_moe_flag_is_a_real_cli_flag():
    from fairseq import options

    from fairseq_taskmoe.config import MoEConfig

    parser = options.get_training_parser()
    args = options.parse_args_and_arch(parser, [
        "/nonexistent", "--user-dir", str(REPO / "fairseq_taskmoe"),
        "--task", "translation_multi_simple_epoch_taskmoe", "--lang-pairs", "en-de",
        "--arch", "transformer_taskmoe_tiny", "--criterion", "label_smoothed_cross_entropy_moe"])
    for name in MoEConfig.__dataclass_fields__:
        if name.startswith("moe_"):
            assert hasattr(args, name), name
    assert args.moe_expert_count == 4  # the tiny arch's default, not the dataclass's
    assert args.moe_aux_loss_weight == 0.01
