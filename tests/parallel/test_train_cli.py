"""End to end on 2 CPU processes (gloo) with the real CLIs: fairseq-train writes
sharded checkpoints (each rank its experts), a stopped run resumes from them to
the same state as an uninterrupted one, fairseq-generate decodes the shard set
at W = 1 exactly like the merged checkpoint, merge/split round-trip, and bad
configurations or files fail early with clear messages."""

import os
import re
import shlex
import subprocess

import pytest
import torch

from parallel.ep_harness import free_port
from taskmoe_testlib import BIN, N_EVAL, multilingual_task_args, run_cli, train_args

from fairseq_taskmoe.checkpoints import REF_KEY, current_umask, load_merged_state, load_source
from fairseq_taskmoe.parallel.merge import main as merge_main
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


def train_2ranks_torchrun(data, save_dir, max_update, extra=()):
    """The same through torchrun on CPU: fairseq's own inference of torchrun's variables divides
    by the CUDA device count, so the init method is given and the rank comes from $RANK."""
    args = [*multilingual_task_args(data), *train_args(save_dir, max_update, extra), *EP_FLAGS,
            "--distributed-init-method", "env://"]
    train = " ".join(shlex.quote(str(a)) for a in [BIN / "fairseq-train", *args])
    proc = subprocess.run(
        [str(BIN / "torchrun"), "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
         "--master_port", str(free_port()), "--no-python", "bash", "-c",
         f"exec {train} --distributed-rank $RANK"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"})
    if proc.returncode:
        raise AssertionError(f"torchrun fairseq-train failed ({proc.returncode}):\n{proc.stdout[-6000:]}")
    return [proc.returncode], [proc.stdout]


@pytest.fixture(scope="module")
def ep_runs(toy_data, tmp_path_factory):
    """resumed: sharded saves, stopped at 3 updates and resumed to 6 from the shard files;
    straight: 6 updates without a stop, launched by torchrun, saved with --moe-gather-checkpoint
    (one complete file)."""
    root = tmp_path_factory.mktemp("ep")
    train_2ranks(toy_data, root / "resumed", 3)
    first = load_merged_state(str(root / "resumed" / "checkpoint_last.pt"))
    train_2ranks(toy_data, root / "resumed", 6)  # picks up checkpoint_last.pt and its shards
    _, logs = train_2ranks_torchrun(toy_data, root / "straight", 6, extra=["--moe-gather-checkpoint"])
    return root, first, logs


def test_sharded_checkpoint_layout(ep_runs):
    root, first, _ = ep_runs
    ckpt_dir = root / "resumed"
    shared = torch.load(ckpt_dir / "checkpoint_last.pt", weights_only=True)
    assert not any(".experts." in k for k in shared["model"]), "experts must stay out of rank 0's file"
    ref = shared["model"][REF_KEY]
    assert ref["world_size"] == 2 and all((ckpt_dir / f).is_file() for f in ref["files"])
    opt = shared["last_optimizer_state"]
    assert opt["expert_param_indices"] and not set(opt["state"]) & set(opt["expert_param_indices"])
    # Shard sets no checkpoint references are collected at the next save; the set the
    # previous checkpoint_last.pt used is only unreferenced once the last save is in place.
    live = {torch.load(p, weights_only=True)["model"][REF_KEY]["set_id"]
            for p in ckpt_dir.glob("checkpoint*.pt")}
    on_disk = {f.name.split("-")[1] for f in ckpt_dir.glob("experts-*-rank-*.pt")}
    assert live <= on_disk and len(on_disk - live) <= 1, (on_disk, live)
    assert len(list(ckpt_dir.glob("experts-*-rank-*.pt"))) == 2 * len(on_disk)
    # The state at 3 updates merged back: all E experts and their moments.
    experts = {k: v for k, v in first["model"].items() if ".experts." in k}
    assert experts and all(v.size(0) == 4 for v in experts.values())  # tiny arch: E = 4
    opt = first["last_optimizer_state"]
    for i in opt["expert_param_indices"]:
        assert opt["state"][i]["exp_avg"].size(0) == 4


def test_gathered_checkpoint_holds_all_experts(ep_runs):
    root, _, _ = ep_runs
    state = torch.load(root / "straight" / "checkpoint_last.pt", weights_only=True)
    experts = {k: v for k, v in state["model"].items() if ".experts." in k}
    assert experts and all(v.size(0) == 4 for v in experts.values())
    assert not list((root / "straight").glob("experts-*"))


def test_all_to_all_sends_exactly_the_routed_rows(ep_runs):
    """Rows handed to the all-to-all / rows routed, logged per side: 1.0 (no padding)."""
    *_, logs = ep_runs
    for side in ("enc", "dec"):
        ratios = re.findall(rf"moe_{side}_a2a_ratio=([0-9.]+)", logs[0])
        assert len(ratios) >= 6 and all(float(r) == 1.0 for r in ratios), (side, ratios)


def test_resume_from_shards_continues_from_the_same_state(ep_runs):
    root, _, _ = ep_runs
    resumed = load_merged_state(str(root / "resumed" / "checkpoint_last.pt"))
    straight = torch.load(root / "straight" / "checkpoint_last.pt", weights_only=True)
    assert resumed["optimizer_history"][-1]["num_updates"] == 6
    for k, v in straight["model"].items():
        torch.testing.assert_close(resumed["model"][k], v, msg=k)
    opt_r, opt_s = resumed["last_optimizer_state"], straight["last_optimizer_state"]
    for i in opt_s["expert_param_indices"]:
        for k in ("exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(opt_r["state"][i][k], opt_s["state"][i][k], msg=f"{i}.{k}")


def test_w1_resumes_from_a_w2_shard_set(ep_runs, toy_data, tmp_path):
    """fairseq-train at W = 1 (--optimizer adam_ep) continues a W = 2 sharded save: every expert
    and its Adam moments come from the shard files (the previous update count is kept)."""
    root, _, _ = ep_runs
    args = [*multilingual_task_args(toy_data),
            *train_args(tmp_path, 7, ["--optimizer", "adam_ep", "--cpu", "--restore-file",
                                      root / "resumed" / "checkpoint_last.pt"])]
    out = run_cli("fairseq-train", args)
    assert re.search(r"Loaded checkpoint .*checkpoint_last\.pt \(epoch \d+ @ 6 updates\)",
                     out.stdout + out.stderr)
    state = torch.load(tmp_path / "checkpoint_last.pt", weights_only=True)  # W = 1: complete
    assert state["optimizer_history"][-1]["num_updates"] == 7
    opt = state["last_optimizer_state"]
    for i in opt["expert_param_indices"]:  # moments continued from the shards, not restarted
        assert opt["state"][i]["exp_avg"].size(0) == 4 and int(opt["state"][i]["step"]) == 7


def _losses_by_update(log):
    out = {}
    for line in log.splitlines():
        u, loss = re.search(r"num_updates=(\d+)", line), re.search(r"(?<![_a-z])loss=([0-9.]+)", line)
        if u and loss:
            out[int(u[1])] = float(loss[1])
    return out


def test_memory_efficient_fp16_with_expert_parallel_tracks_fp32(ep_runs, toy_data, tmp_path):
    """fairseq's --memory-efficient-fp16 runs on CPU: half params, grads and all-to-all, adam_ep on
    the model's params; the loss tracks the fp32 run and the sharded checkpoint is complete."""
    *_, logs = ep_runs
    _, half = train_2ranks(toy_data, tmp_path, 6, extra=["--memory-efficient-fp16"])
    assert "loss_scale=" in half[0]  # fairseq's fp16 path (dynamic loss scaler) ran
    fp32, fp16 = _losses_by_update(logs[0]), _losses_by_update(half[0])
    assert len(fp32) >= 6 and fp16.keys() == fp32.keys(), (fp32, fp16)
    for u, b in fp32.items():
        assert abs(fp16[u] - b) <= 0.02 * b, (u, fp16, fp32)
    state = load_merged_state(str(tmp_path / "checkpoint_last.pt"))
    experts = [v for k, v in state["model"].items() if ".experts." in k]
    assert experts and all(v.size(0) == 4 and v.dtype == torch.float16 for v in experts)


def _generate(toy_data, path):
    out = run_cli("fairseq-generate", [
        *multilingual_task_args(toy_data), "--source-lang", "en", "--target-lang", "de",
        "--path", path, "--beam", "2", "--max-tokens", "400", "--cpu", "--gen-subset", "test"])
    hyps = sorted(line for line in out.stdout.splitlines() if line.startswith("H-"))
    assert len(hyps) == N_EVAL
    return hyps


def test_shard_set_decodes_at_w1_like_the_merged_checkpoint(ep_runs, toy_data, tmp_path):
    root, _, _ = ep_runs
    shared = root / "resumed" / "checkpoint_last.pt"
    merge_main(["merge", str(shared), "--out", str(tmp_path / "merged.pt")])
    merged = torch.load(tmp_path / "merged.pt", weights_only=True)
    assert REF_KEY not in merged["model"]
    assert load_source(str(shared))["model"].keys() == merged["model"].keys()  # plugin tools' loader
    assert _generate(toy_data, shared) == _generate(toy_data, tmp_path / "merged.pt")


def test_generate_finds_the_shards_beside_a_moved_checkpoint(ep_runs, toy_data, tmp_path):
    """A save dir moved elsewhere (the dir recorded at save time gone): fairseq-generate looks
    beside the file given with --path first, and decodes as the merged checkpoint does."""
    root, _, _ = ep_runs
    moved = tmp_path / "moved"
    moved.mkdir()
    state = torch.load(root / "resumed" / "checkpoint_last.pt", weights_only=True)
    for f in state["model"][REF_KEY]["files"]:
        (moved / f).write_bytes((root / "resumed" / f).read_bytes())
    gone = str(tmp_path / "gone")  # where it was saved and trained: not there any more
    state["model"][REF_KEY]["dir"] = gone
    for group in ("model", "task"):
        state["cfg"][group].save_dir = gone
    torch.save(state, moved / "checkpoint_last.pt")
    merge_main(["merge", str(root / "resumed" / "checkpoint_last.pt"), "--out", str(tmp_path / "merged.pt")])
    assert _generate(toy_data, moved / "checkpoint_last.pt") == _generate(toy_data, tmp_path / "merged.pt")
    # the Python API too: from_pretrained looks beside the file it is given
    from fairseq_taskmoe.serve import from_pretrained

    got = from_pretrained(str(moved / "checkpoint_last.pt"), data=str(toy_data))
    want = from_pretrained(str(tmp_path / "merged.pt"), data=str(toy_data))
    got_sd, want_sd = got.models[0].state_dict(), want.models[0].state_dict()
    assert got_sd.keys() == want_sd.keys() and any(".experts." in k for k in got_sd)
    assert all(torch.equal(got_sd[k], want_sd[k]) for k in got_sd)
    lines = ["the cat runs", "a big red house"]
    assert got.translate(lines, "en", "de") == want.translate(lines, "en", "de")


def test_split_merge_round_trip(ep_runs, tmp_path):
    root, _, _ = ep_runs
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
    assert (tmp_path / "checkpoint_last.pt").is_file()
    mask = current_umask()
    for path in (shard1, tmp_path / "checkpoint_last.pt"):  # the umask's mode, not mkstemp's 0600
        assert path.stat().st_mode & 0o777 == 0o666 & ~mask, path


@pytest.mark.parametrize("obj, found", [([1, 2], "found list"), ({"cfg": {}}, "without 'model'")])
def test_split_refuses_what_is_not_a_checkpoint(tmp_path, obj, found):
    torch.save(obj, tmp_path / "x.pt")
    with pytest.raises(ValueError, match=f"x.pt: not a fairseq checkpoint.*{found}"):
        merge_main(["split", str(tmp_path / "x.pt"), "--world-size", "2"])
    with pytest.raises(ValueError, match="not a fairseq checkpoint"):
        merge_main(["merge", str(tmp_path / "x.pt")])


def test_bad_shard_sets_refused(ep_runs, tmp_path):
    root, _, _ = ep_runs
    for run, out in (("straight", tmp_path / "a"), ("straight", tmp_path / "b")):
        merge_main(["split", str(root / run / "checkpoint_last.pt"), "--world-size", "2",
                    "--out-dir", str(out)])
    os.replace(tmp_path / "b" / "checkpoint_last.ep1-of-2.pt",
               tmp_path / "a" / "checkpoint_last.ep1-of-2.pt")
    with pytest.raises(ValueError, match="another shard set"):
        load_merged_state(str(tmp_path / "a" / "checkpoint_last.ep0-of-2.pt"))
    os.remove(tmp_path / "a" / "checkpoint_last.ep1-of-2.pt")
    with pytest.raises(FileNotFoundError, match="incomplete shard set"):
        merge_main(["merge", str(tmp_path / "a" / "checkpoint_last.ep0-of-2.pt")])
    # A sharded training checkpoint whose shard files are gone: a clear error naming them.
    moved = tmp_path / "moved.pt"
    moved.write_bytes((root / "resumed" / "checkpoint_last.pt").read_bytes())
    state = torch.load(moved, weights_only=True)
    state["model"][REF_KEY]["dir"] = str(tmp_path / "nowhere")
    torch.save(state, moved)
    with pytest.raises(FileNotFoundError, match="expert shards of checkpoint set .* not found"):
        load_merged_state(str(moved))


def test_experts_not_divisible_by_world_size_fails_early(toy_data, tmp_path):
    rcs, logs = train_2ranks(toy_data, tmp_path, 3, extra=["--moe-expert-count", "3"], check=False)
    assert all(rcs)
    assert "--moe-expert-count (3) must be divisible by --distributed-world-size (2)" in logs[0]
    assert not list(tmp_path.glob("*.pt"))


@pytest.mark.parametrize("flags, message", [
    ({"ddp_backend": "pytorch_ddp"}, "--ddp-backend"),
    ({"optimizer": "adam"}, "--optimizer"),
    ({"no_save_optimizer_state": True}, "--no-save-optimizer-state"),
    ({"fp16": True}, "does not support --fp16.*--memory-efficient-fp16"),
    ({"bf16": True}, "does not support --bf16.*--memory-efficient-bf16"),
    ({"load_checkpoint_on_all_dp_ranks": False}, "--load-checkpoint-on-all-dp-ranks"),
])
def test_unsafe_training_flags_refused(flags, message):
    from argparse import Namespace
    args = Namespace(**{"ddp_backend": "legacy_ddp", "optimizer": "adam_ep",
                        "load_checkpoint_on_all_dp_ranks": True, **flags})
    with pytest.raises(ValueError, match=message):
        check_training_args(args, 2)
