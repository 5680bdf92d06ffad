"""The state-dict mapping, pure: one upcycled MoE layer equals the dense FFN it came from."""

import argparse
import configparser
import importlib

import pytest
import torch
import torch.nn.functional as F

from fairseq_taskmoe.config import moe_config_from_args
from fairseq_taskmoe.moe.layer import MoELayer
from fairseq_taskmoe.upcycle.mapping import (
    equal_top1_task_gate, perturb_experts, stack_ffn, upcycle_state,
)
from taskmoe_testlib import REPO

D, FFN, E, TASKS = 8, 16, 4, 3


def _dense_ffn(gen):
    return {"fc1.weight": torch.randn(FFN, D, generator=gen), "fc1.bias": torch.randn(FFN, generator=gen),
            "fc2.weight": torch.randn(D, FFN, generator=gen), "fc2.bias": torch.randn(D, generator=gen)}


def _ffn(ffn, x):
    return F.linear(F.relu(F.linear(x, ffn["fc1.weight"], ffn["fc1.bias"])), ffn["fc2.weight"], ffn["fc2.bias"])


def _upcycled_layer(routing, k, causal, gen, noise=0.0):
    torch.manual_seed(0)
    layer = MoELayer(D, FFN, E, routing, k, F.relu, num_tasks=TASKS, causal=causal)
    side = "decoder" if causal else "encoder"
    prefix = f"{side}.layers.0."
    dense = {prefix + n: t for n, t in _dense_ffn(gen).items()}
    init = {prefix + "moe." + n: t for n, t in layer.state_dict().items()}
    moe = moe_config_from_args(argparse.Namespace(
        moe_top_k=k, moe_expert_count=E, moe_encoder_routing=routing, moe_decoder_routing=routing,
        moe_task_names="a,b,c"))
    state, reports = upcycle_state(dense, init, moe, torch.Generator().manual_seed(1))
    perturb_experts(state, reports, noise, torch.Generator().manual_seed(2))
    layer.load_state_dict({n[len(prefix + "moe."):]: t for n, t in state.items()})
    return layer.eval(), {n[len(prefix):]: t for n, t in dense.items()}, reports


@pytest.mark.parametrize("routing", ["token", "sentence", "sentence-pooled", "task"])
@pytest.mark.parametrize("k", [1, 2])
@pytest.mark.parametrize("causal", [False, True])
def test_upcycled_layer_is_the_dense_ffn(routing, k, causal):
    gen = torch.Generator().manual_seed(3)
    layer, ffn, reports = _upcycled_layer(routing, k, causal, gen)
    x = torch.randn(5, 3, D, generator=gen)  # (L, B, D)
    pad = torch.zeros(3, 5, dtype=torch.bool)
    pad[1, 3:] = True  # a padded sentence
    with torch.no_grad():
        y, _ = layer(x, pad, task_ids=torch.tensor([0, 2, 1]))
    want = _ffn(ffn, x).masked_fill(pad.t().unsqueeze(-1), 0.0)
    assert (y - want).abs().max().item() < 1e-5
    expected_scale = 1.0 if k == 2 else (None if routing == "task" else float(E))
    if expected_scale is not None:
        assert reports[0]["fc2_scale"] == expected_scale


def test_stack_ffn_copies_each_expert():
    ffn = _dense_ffn(torch.Generator().manual_seed(0))
    experts = stack_ffn(ffn, E)
    assert experts["fc1_weight"].shape == (E, FFN, D) and experts["fc2_weight"].shape == (E, D, FFN)
    for e in range(E):
        assert torch.equal(experts["fc1_weight"][e], ffn["fc1.weight"])
        assert torch.equal(experts["fc2_bias"][e], ffn["fc2.bias"])
    experts["fc1_weight"][0].zero_()  # independent copies, not views of one tensor
    assert not torch.equal(experts["fc1_weight"][1], experts["fc1_weight"][0])


def test_equal_top1_task_gate_rows_share_the_top_probability():
    gate = torch.randn(6, 8, generator=torch.Generator().manual_seed(0))
    rows, p_star = equal_top1_task_gate(gate, torch.Generator().manual_seed(1))
    probs = torch.softmax(rows, -1)
    assert torch.allclose(probs.max(-1).values, torch.full((6,), p_star), atol=1e-7)
    for row in rows:
        assert torch.equal(row.sort().values, gate[0].sort().values)  # a permutation of one scratch row
    assert len(set(rows.argmax(-1).tolist())) > 1  # tasks still spread over experts


def test_expert_noise_is_relative_and_breaks_symmetry():
    gen = torch.Generator().manual_seed(3)
    layer, ffn, _ = _upcycled_layer("task", 2, False, gen, noise=0.01)
    w = layer.experts.fc1_weight.detach()
    assert not torch.equal(w[0], w[1])
    rel = ((w - ffn["fc1.weight"]).std() / ffn["fc1.weight"].std()).item()
    assert 0.005 < rel < 0.02


def test_setup_cfg_names_the_console_script():
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    scripts = dict(line.split(" = ") for line in cfg["options.entry_points"]["console_scripts"].split("\n")
                   if line.strip())
    module, func = scripts["fairseq-taskmoe-upcycle"].split(":")
    from fairseq_taskmoe.upcycle import cli

    assert getattr(importlib.import_module(module), func) is cli.cli_main
