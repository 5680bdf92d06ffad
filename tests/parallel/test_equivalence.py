"""2-process expert parallel equals 1 process: loss, grad norm, grads and the
updated params of every expert after one step, for token (with a binding
capacity and dropless), sentence and task routing through the split-size
all-to-all (rows sent == rows routed). Checkpoints: the gathered one and the
sharded one (each rank writes its experts) both load back into each rank's
shard and into a single process (params and Adam moments), and a save killed
half-way leaves the previous sharded checkpoint loadable."""

import os

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from parallel import ep_harness as H
from fairseq_taskmoe.parallel.optimizer import ExpertParallelAdam
from fairseq_taskmoe.checkpoints import REF_KEY
from fairseq_taskmoe.parallel.shards import collect_garbage, live_sets, write_shard


def _assert_same_state(model, opt, fresh, fresh_opt):
    for (n, p), q in zip(model.named_parameters(), fresh.parameters()):
        assert torch.equal(p, q), n
        for k, v in opt.state[p].items():
            assert torch.equal(torch.as_tensor(v), torch.as_tensor(fresh_opt.state[q][k])), (n, k)


def _worker(rank, world, port, out_dir):
    H.init_gloo(rank, world, port)
    try:
        model, opt = H.run_step(rank, world, out_dir)
        dist.barrier()
        ckpt = torch.load(out_dir / "result.pt", weights_only=True)
        # Resume at the same W: a differently initialised shard loads the full checkpoint,
        # then the sharded one (its experts read from the shard files).
        for model_key, opt_key in (("model_sd", "opt_sd"), ("shared_model_sd", "shared_opt_sd")):
            fresh = H.build(seed=123)
            fresh.load_state_dict(ckpt[model_key])
            fresh_opt = ExpertParallelAdam(fresh.parameters(), lr=0.01)
            fresh_opt.load_state_dict(ckpt[opt_key])
            _assert_same_state(model, opt, fresh, fresh_opt)
    finally:
        dist.destroy_process_group()


def _opt_states(opt_sd):
    return {i: {k: torch.as_tensor(v) for k, v in st.items()} for i, st in opt_sd["state"].items()}


def test_two_ranks_match_one(tmp_path):
    torch.set_num_threads(1)
    (tmp_path / "w1").mkdir()
    (tmp_path / "w2").mkdir()
    H.run_step(0, 1, tmp_path / "w1")
    mp.spawn(_worker, args=(2, H.free_port(), tmp_path / "w2"), nprocs=2, join=True)
    one = torch.load(tmp_path / "w1" / "result.pt")
    two = torch.load(tmp_path / "w2" / "result.pt")
    torch.testing.assert_close(two["loss"], one["loss"])
    torch.testing.assert_close(two["norm"], one["norm"])
    assert one["norm"] > 0.05, "clipping must be active for the test to cover it"
    assert one["moe"]["dropped"] > 0, "the capacity layer must drop for the test to cover it"
    assert two["moe"]["dropped"] == one["moe"]["dropped"]
    assert one["moe"]["a2a_routed"] == 0  # W = 1: no all-to-all, nothing logged
    assert two["moe"]["a2a_routed"] > 0
    assert two["moe"]["a2a_sent"] == two["moe"]["a2a_routed"]  # no padding
    for n in one["grads"]:
        torch.testing.assert_close(two["grads"][n], one["grads"][n], msg=n)
        torch.testing.assert_close(two["params"][n], one["params"][n], msg=n)
    for n, t in one["model_sd"].items():
        assert two["model_sd"][n].shape == t.shape, n  # all E experts reach the checkpoint
        torch.testing.assert_close(two["model_sd"][n], t, msg=n)
    for i, st in _opt_states(one["opt_sd"]).items():
        for k, v in st.items():
            torch.testing.assert_close(torch.as_tensor(two["opt_sd"]["state"][i][k]), v, msg=f"{i}.{k}")

    # Sharded: the shared part holds no expert tensor, one file per rank holds them.
    shared = two["shared_model_sd"]
    assert not any(".experts." in k for k in shared), "experts must not reach rank 0's file"
    ref = shared[REF_KEY]
    ckpt_dir = tmp_path / "w2" / "ckpt"
    assert sorted(os.listdir(ckpt_dir)) == sorted(ref["files"]) and len(ref["files"]) == 2
    # ... and reshards into one process (W = 1), params and Adam moments.
    single = H.build(seed=123)
    single.load_state_dict(dict(shared))
    for n, p in single.named_parameters():
        torch.testing.assert_close(p.detach(), one["params"][n], msg=n)
    single_opt = ExpertParallelAdam(single.parameters(), lr=0.01)
    single_opt.load_state_dict(two["shared_opt_sd"])
    reloaded = _opt_states(single_opt.state_dict())
    for i, st in _opt_states(one["opt_sd"]).items():
        for k, v in st.items():
            torch.testing.assert_close(reloaded[i][k], v, msg=f"{i}.{k}")

    # A save killed after rank 0 wrote its new shard: the old set is still complete and
    # still loads; garbage collection keeps every set a checkpoint references.
    torch.save({"model": shared}, ckpt_dir / "checkpoint_last.pt")
    write_shard(str(ckpt_dir), "deadbeef" * 2, 0, 2, {}, {})
    collect_garbage(str(ckpt_dir), 0, 2, "deadbeef" * 2, live_sets(str(ckpt_dir)))
    again = H.build(seed=7)
    again.load_state_dict(dict(shared))
    for n, p in again.named_parameters():
        torch.testing.assert_close(p.detach(), one["params"][n], msg=n)
    # Once no checkpoint references a set, its files go at the next save.
    os.remove(ckpt_dir / "checkpoint_last.pt")
    collect_garbage(str(ckpt_dir), 0, 2, "deadbeef" * 2, live_sets(str(ckpt_dir)))
    assert not (ckpt_dir / ref["files"][0]).exists() and (ckpt_dir / ref["files"][1]).exists()
