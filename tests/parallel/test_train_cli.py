"""End to end on 2 CPU processes (gloo) with the real CLIs: fairseq-train writes
all E experts, a stopped run resumes to the same state as an uninterrupted
one, merge/split round-trips, fairseq-generate decodes the checkpoint, and bad
configurations fail early with clear messages."""

import os
import subprocess

import pytest
import torch

from parallel.ep_harness import free_port
from taskmoe_testlib import BIN, N_EVAL, multilingual_task_args, run_cli, train_args

from fairseq_taskmoe.parallel.merge import load_merged_state, main as merge_main
from fairseq_taskmoe.parallel.sharding import check_training_args

EP_FLAGS = ["--optimizer", "adam_ep", "--cpu", "--distributed-backend", "gloo",
            "--ddp-backend", "legacy_ddp", "--distributed-world-size", "2", "--distributed-no-spawn",
            "--load-checkpoint-on-all-dp-ranks"]


def train_2ranks(data, save_dir, max_update, extra=(), check=True):
    """fairseq-train on 2 processes (one per rank, tcp rendezvous); returns (rcs, logs)."""
    args = [*multilingual_task_args(data), *train_args(save_dir, max_update, extra)]
    # train_args picks --optimizer adam: the EP flags come last and win.
    args += EP_FLAGS + ["--distributed-init-method", f"tcp://127.0.0.1:{free_port()}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([str(BIN / "fairseq-train"), *map(str, args), "--distributed-rank",
                               str(r)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              env=env) for r in range(2)]
    logs = [p.communicate(timeout=300)[0] for p in procs]
    rcs = [p.returncode for p in procs]
    if check and any(rcs):
        raise AssertionError(f"2-rank fairseq-train failed {rcs}:\n{logs[0][-4000:]}\n{logs[1][-4000:]}")
    return rcs, logs


@pytest.fixture(scope="module")
def ep_runs(toy_data, tmp_path_factory):
    root = tmp_path_factory.mktemp("ep")
    train_2ranks(toy_data, root / "resumed", 3)
    first = torch.load(root / "resumed" / "checkpoint_last.pt", weights_only=True)
    train_2ranks(toy_data, root / "resumed", 6)  # picks up checkpoint_last.pt
    train_2ranks(toy_data, root / "straight", 6)
    return root, first


def test_checkpoint_holds_all_experts(ep_runs):
    _, state = ep_runs
    experts = {k: v for k, v in state["model"].items() if ".experts." in k}
    assert experts and all(v.size(0) == 4 for v in experts.values())  # tiny arch: E = 4
    opt = state["last_optimizer_state"]
    for i in opt["expert_param_indices"]:
        assert opt["state"][i]["exp_avg"].size(0) == 4


def test_resume_continues_from_the_same_state(ep_runs):
    root, _ = ep_runs
    resumed = torch.load(root / "resumed" / "checkpoint_last.pt", weights_only=True)
    straight = torch.load(root / "straight" / "checkpoint_last.pt", weights_only=True)
    assert resumed["optimizer_history"][-1]["num_updates"] == 6
    for k, v in straight["model"].items():
        torch.testing.assert_close(resumed["model"][k], v, msg=k)


def test_split_merge_generate(ep_runs, toy_data, tmp_path):
    root, _ = ep_runs
    ckpt = root / "straight" / "checkpoint_last.pt"
    merge_main(["split", str(ckpt), "--world-size", "2", "--out-dir", str(tmp_path)])
    shard1 = tmp_path / "checkpoint_last.ep1-of-2.pt"
    with pytest.raises(FileExistsError, match="--force"):
        merge_main(["split", str(ckpt), "--world-size", "2", "--out-dir", str(tmp_path)])
    merged = load_merged_state(str(shard1))
    original = torch.load(ckpt, weights_only=True)
    for k, v in original["model"].items():
        assert torch.equal(merged["model"][k], v), k
    merge_main(["merge", str(shard1)])
    out = run_cli("fairseq-generate", [
        *multilingual_task_args(toy_data), "--source-lang", "en", "--target-lang", "de",
        "--path", tmp_path / "checkpoint_last.pt", "--beam", "2", "--max-tokens", "400", "--cpu",
        "--gen-subset", "test"])
    assert sum(line.startswith("H-") for line in out.stdout.splitlines()) == N_EVAL


def test_bad_shard_sets_refused(ep_runs, tmp_path):
    root, _ = ep_runs
    for run, out in (("straight", tmp_path / "a"), ("resumed", tmp_path / "b")):
        merge_main(["split", str(root / run / "checkpoint_last.pt"), "--world-size", "2",
                    "--out-dir", str(out)])
    os.replace(tmp_path / "b" / "checkpoint_last.ep1-of-2.pt",
               tmp_path / "a" / "checkpoint_last.ep1-of-2.pt")
    with pytest.raises(ValueError, match="another shard set"):
        load_merged_state(str(tmp_path / "a" / "checkpoint_last.ep0-of-2.pt"))
    os.remove(tmp_path / "a" / "checkpoint_last.ep1-of-2.pt")
    with pytest.raises(FileNotFoundError, match="incomplete shard set"):
        merge_main(["merge", str(tmp_path / "a" / "checkpoint_last.ep0-of-2.pt")])


def test_experts_not_divisible_by_world_size_fails_early(toy_data, tmp_path):
    rcs, logs = train_2ranks(toy_data, tmp_path, 3, extra=["--moe-expert-count", "3"], check=False)
    assert all(rcs)
    assert "--moe-expert-count (3) must be divisible by --distributed-world-size (2)" in logs[0]
    assert not list(tmp_path.glob("*.pt"))


@pytest.mark.parametrize("flags, message", [
    ({"ddp_backend": "pytorch_ddp"}, "--ddp-backend"),
    ({"optimizer": "adam"}, "--optimizer"),
    ({"no_save_optimizer_state": True}, "--no-save-optimizer-state"),
    ({"fp16": True}, "--memory-efficient-fp16"),
    ({"load_checkpoint_on_all_dp_ranks": False}, "--load-checkpoint-on-all-dp-ranks"),
])
def test_unsafe_training_flags_refused(flags, message):
    from argparse import Namespace
    args = Namespace(**{"ddp_backend": "legacy_ddp", "optimizer": "adam_ep",
                        "load_checkpoint_on_all_dp_ranks": True, **flags})
    with pytest.raises(ValueError, match=message):
        check_training_args(args, 2)
