"""2-process expert parallel equals 1 process: loss, grad norm, grads and the
updated params of every expert after one step, for token (with a binding
capacity and dropless), sentence and task routing through the split-size
all-to-all (rows sent == rows routed); the gathered checkpoint loads back into
each rank's shard (params and Adam moments)."""

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from parallel import ep_harness as H
from fairseq_taskmoe.parallel.optimizer import ExpertParallelAdam


def _worker(rank, world, port, out_path):
    H.init_gloo(rank, world, port)
    try:
        model, opt = H.run_step(rank, world, out_path)
        dist.barrier()
        # Resume: a differently initialised shard loads the full checkpoint.
        ckpt = torch.load(out_path, weights_only=True)
        fresh = H.build(seed=123)
        fresh.load_state_dict(ckpt["model_sd"])
        fresh_opt = ExpertParallelAdam(fresh.parameters(), lr=0.01)
        fresh_opt.load_state_dict(ckpt["opt_sd"])
        for (n, p), q in zip(model.named_parameters(), fresh.parameters()):
            assert torch.equal(p, q), n
            for k, v in opt.state[p].items():
                assert torch.equal(torch.as_tensor(v), torch.as_tensor(fresh_opt.state[q][k])), (n, k)
    finally:
        dist.destroy_process_group()


def test_two_ranks_match_one(tmp_path):
    torch.set_num_threads(1)
    H.run_step(0, 1, tmp_path / "w1.pt")
    mp.spawn(_worker, args=(2, H.free_port(), tmp_path / "w2.pt"), nprocs=2, join=True)
    one, two = torch.load(tmp_path / "w1.pt"), torch.load(tmp_path / "w2.pt")
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
    for i, st in one["opt_sd"]["state"].items():
        for k, v in st.items():
            torch.testing.assert_close(torch.as_tensor(two["opt_sd"]["state"][i][k]),
                                       torch.as_tensor(v), msg=f"{i}.{k}")
