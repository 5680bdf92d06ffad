"""dense -> upcycle -> fairseq-train --finetune-from-model -> per-task extract -> stock fairseq.

With top-1 task routing on both sides, a task's extract is a stock fairseq
``transformer`` with exactly the dense model's parameter names and shapes.
"""

import json
import re
import subprocess
import sys

import torch

from fairseq_taskmoe.extract import extract
from fairseq_taskmoe.upcycle import UpcycleOptions, upcycle
from taskmoe_testlib import run_cli


def _nll(log: str):
    return [float(x) for x in re.findall(r"train_inner \|.*? nll_loss=(\d+\.\d+)", log)]


def test_finetune_then_extract_has_the_dense_shapes(dense, toy_data, tmp_path):
    init = tmp_path / "init.pt"
    report = upcycle(str(dense["ml_post"]), str(init), UpcycleOptions(
        expert_count=4, top_k=1, encoder_routing="task", decoder_routing="task", data=str(toy_data)))
    save = tmp_path / "ft"
    proc = run_cli("fairseq-train", [
        toy_data, *report["fine_tune_flags"], "--finetune-from-model", init,
        "--criterion", "label_smoothed_cross_entropy_moe", "--label-smoothing", "0.1",
        "--optimizer", "adam", "--lr", "0.003", "--max-tokens", "1000", "--max-update", "12",
        "--save-dir", save, "--no-progress-bar", "--log-format", "simple", "--log-interval", "1",
        "--num-workers", "0", "--seed", "1", "--no-epoch-checkpoints", "--disable-validation"])
    log = proc.stdout + proc.stderr
    assert "loading pretrained model from" in log  # fairseq took the weights (strict load)
    nll = _nll(log)
    assert len(nll) == 12, log[-3000:]
    assert sum(nll[-3:]) / 3 < sum(nll[:3]) / 3  # it trains

    out = tmp_path / "de"
    ext = extract(str(save / "checkpoint_last.pt"), ["en-de"], str(out), fmt="stock", data_dir=str(toy_data))
    assert ext["moe_layout"] == {"encoder": {"1": {"ffn_dim": 64}}, "decoder": {"1": {"ffn_dim": 64}}}
    shapes = {k: list(v.shape) for k, v in torch.load(dense["ml_post"], weights_only=True)["model"].items()}
    ckpt = out / "checkpoint.pt"
    # A fresh process that never imports the plugin loads the extract as a stock transformer.
    code = (
        "import json, sys; from fairseq import checkpoint_utils\n"
        f"m, cfg, t = checkpoint_utils.load_model_ensemble_and_task([{str(ckpt)!r}], "
        f"arg_overrides={{'data': {str(toy_data)!r}}})\n"
        "assert type(m[0]).__name__ == 'TransformerModel', type(m[0])\n"
        "assert not any(k.startswith('fairseq_taskmoe') for k in sys.modules)\n"
        "print(json.dumps({k: list(v.shape) for k, v in m[0].state_dict().items()}))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          cwd="/", env={"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == shapes


def test_fine_tune_flags_rebuild_the_model_args(dense, toy_data, bi_data, tmp_path):
    """fairseq-train builds the model from its command line, not the checkpoint: the printed flags
    must give every model arg the upcycled checkpoint has (a missed --*-normalize-before would
    still load strictly, and silently train another model)."""
    from fairseq import options

    from fairseq_taskmoe.upcycle.plan import _model_flag_actions

    for name, data, routing in (("ml_pre", toy_data, "task"), ("bi", bi_data, "token"),
                                ("ours_freq0", toy_data, "sentence")):
        out = tmp_path / f"{name}.pt"
        report = upcycle(str(dense[name]), str(out), UpcycleOptions(
            expert_count=2, top_k=2, encoder_routing=routing, decoder_routing=routing))
        args = options.parse_args_and_arch(options.get_training_parser(),
                                           [str(data), *report["fine_tune_flags"]])
        stored = torch.load(out, weights_only=True)["cfg"]["model"]
        for action in _model_flag_actions():
            if action.dest == "moe_task_names":
                continue  # the task fills it from --lang-pairs
            assert getattr(args, action.dest, None) == getattr(stored, action.dest, None), (name, action.dest)
