"""MoE layer: equivalences with a dense FFN and a naive reference, routing semantics."""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from fairseq_taskmoe.moe.layer import MoELayer, MoELayerConfig

D, FF = 16, 32


def make_layer(num_experts=4, routing="token", top_k=2, num_tasks=3, causal=False, **kw):
    torch.manual_seed(0)
    return MoELayer(MoELayerConfig(D, FF, num_experts, routing, top_k, F.relu, num_tasks=num_tasks,
                                   causal=causal, **kw))


def naive_moe(layer, x, mask, task_ids):
    """Reference: loop over tokens, sum_k w_k * expert_k(x) (same routing decision)."""
    x_bld = x.transpose(0, 1)
    routing, _ = layer.route(x_bld, mask, task_ids)
    tokens = x_bld[mask]
    out = torch.zeros_like(tokens)
    ex = layer.experts
    for t in range(tokens.size(0)):
        for j in range(routing.expert_idx.size(1)):
            if routing.keep[t, j]:
                e = routing.expert_idx[t, j]
                h = F.relu(tokens[t] @ ex.fc1_weight[e].t() + ex.fc1_bias[e])
                out[t] += routing.weights[t, j] * (h @ ex.fc2_weight[e].t() + ex.fc2_bias[e])
    y = torch.zeros_like(x_bld)
    y[mask] = out
    return y.transpose(0, 1)


def batch(bsz=5, length=7, pad_last=True):
    torch.manual_seed(1)
    x = torch.randn(length, bsz, D)
    pad = torch.zeros(bsz, length, dtype=torch.bool)
    if pad_last:
        pad[0, -3:] = True
        pad[2, -1:] = True
    return x, pad


def test_one_expert_equals_dense_ffn_forward_and_grads():
    layer = make_layer(num_experts=1, top_k=1)
    dense1, dense2 = nn.Linear(D, FF), nn.Linear(FF, D)
    with torch.no_grad():
        dense1.weight.copy_(layer.experts.fc1_weight[0]); dense1.bias.copy_(layer.experts.fc1_bias[0])
        dense2.weight.copy_(layer.experts.fc2_weight[0]); dense2.bias.copy_(layer.experts.fc2_bias[0])
    x, pad = batch(pad_last=False)
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    y_moe, _ = layer(x1, None)
    y_dense = dense2(F.relu(dense1(x2)))
    torch.testing.assert_close(y_moe, y_dense)
    g = torch.randn_like(y_dense)
    (y_moe * g).sum().backward()
    (y_dense * g).sum().backward()
    torch.testing.assert_close(x1.grad, x2.grad)
    torch.testing.assert_close(layer.experts.fc1_weight.grad[0], dense1.weight.grad)
    torch.testing.assert_close(layer.experts.fc2_weight.grad[0], dense2.weight.grad)
    torch.testing.assert_close(layer.experts.fc1_bias.grad[0], dense1.bias.grad)
    torch.testing.assert_close(layer.experts.fc2_bias.grad[0], dense2.bias.grad)


@pytest.mark.parametrize("routing", ["token", "sentence", "sentence-pooled", "task"])
@pytest.mark.parametrize("top_k", [1, 2])
def test_sorted_dispatch_equals_naive_reference(routing, top_k):
    layer = make_layer(routing=routing, top_k=top_k, capacity_factor=0.5)
    layer.eval()
    x, pad = batch()
    task_ids = torch.tensor([0, 1, 2, 1, 0])
    y, _ = layer(x, pad, task_ids)
    ref = naive_moe(layer, x, ~pad, task_ids)
    torch.testing.assert_close(y, ref, atol=1e-6, rtol=1e-5)


def test_token_capacity_drops_and_reports_overflow():
    layer = make_layer(capacity_factor=0.5)
    layer.train()
    x, pad = batch()
    y, stats = layer(x, pad)
    n_tokens = int((~pad).sum())
    assert stats.assigned.item() == 2 * n_tokens
    cap = -(-0.5 * 2 * n_tokens // 4)
    assert stats.dropped.item() > 0
    assert torch.all(stats.expert_counts <= cap)
    assert stats.expert_counts.sum().item() + stats.dropped.item() == 2 * n_tokens


def test_task_routing_same_experts_and_weights_for_all_tokens_of_a_task():
    layer = make_layer(routing="task")
    x, pad = batch()
    task_ids = torch.tensor([0, 1, 2, 1, 0])
    routing, _ = layer.route(x.transpose(0, 1), ~pad, task_ids)
    token_task = task_ids.unsqueeze(1).expand(-1, x.size(0))[~pad]
    for t in range(3):
        sel = token_task == t
        assert (routing.expert_idx[sel] == routing.expert_idx[sel][0]).all()
        assert torch.equal(routing.weights[sel], routing.weights[sel][:1].expand_as(routing.weights[sel]))
    # task routing ignores the token content entirely
    routing2, _ = layer.route(torch.randn_like(x).transpose(0, 1), ~pad, task_ids)
    assert torch.equal(routing.expert_idx, routing2.expert_idx)


@pytest.mark.parametrize("routing", ["sentence", "sentence-pooled"])
def test_sentence_routing_one_choice_per_sentence_and_padding_ignored(routing):
    layer = make_layer(routing=routing)
    x, pad = batch()
    r, _ = layer.route(x.transpose(0, 1), ~pad, None)
    sent = torch.arange(5).unsqueeze(1).expand(-1, x.size(0))[~pad]
    for b in range(5):
        assert (r.expert_idx[sent == b] == r.expert_idx[sent == b][0]).all()
    # changing padded positions changes nothing
    x2 = x.clone()
    x2[-3:, 0] = 1e3
    r2, _ = layer.route(x2.transpose(0, 1), ~pad, None)
    assert torch.equal(r.expert_idx, r2.expert_idx) and torch.equal(r.weights, r2.weights)


def test_padding_never_routed_or_counted():
    layer = make_layer()
    layer.eval()
    x, pad = batch()
    y, stats = layer(x, pad)
    assert torch.all(y.transpose(0, 1)[pad] == 0)
    assert stats.assigned.item() == 2 * int((~pad).sum())
    assert stats.expert_counts.sum().item() == 2 * int((~pad).sum())


@pytest.mark.parametrize("routing", ["sentence", "sentence-pooled", "token", "task"])
def test_decoder_incremental_equals_full_sequence(routing):
    """Causal sentence routing: step-by-step decoding routes like the full pass."""
    layer = make_layer(routing=routing, causal=True)
    layer.eval()
    x, _ = batch(pad_last=False)
    task_ids = torch.tensor([0, 1, 2, 1, 0])
    full, _ = layer(x, None, task_ids)
    state = {}
    steps = [layer(x[t:t + 1], None, task_ids, incremental_state=state)[0] for t in range(x.size(0))]
    torch.testing.assert_close(torch.cat(steps, 0), full, atol=1e-6, rtol=1e-5)


def test_expert_params_tagged_for_legacy_ddp():
    layer = make_layer()
    assert all(getattr(p, "expert", False) for p in layer.experts.parameters())
    assert not any(getattr(p, "expert", False) for p in layer.router.parameters())


@pytest.mark.parametrize("routing", ["token", "task"])
def test_bf16_layer_close_to_fp32_and_gate_softmax_in_fp32(routing):
    layer = make_layer(routing=routing, gate_fp32=True)
    layer.eval()
    x, pad = batch()
    task_ids = torch.tensor([0, 1, 2, 1, 0])
    y32, _ = layer(x, pad, task_ids)
    r32, _ = layer.route(x.transpose(0, 1), ~pad, task_ids)
    layer16 = layer.to(torch.bfloat16)
    y16, stats = layer16(x.to(torch.bfloat16), pad, task_ids)
    assert y16.dtype == torch.bfloat16 and stats.aux_loss.dtype == torch.float32
    r16, _ = layer16.route(x.to(torch.bfloat16).transpose(0, 1), ~pad, task_ids)
    assert r16.weights.dtype == torch.float32
    assert (r16.expert_idx == r32.expert_idx).float().mean() > 0.9  # fp32 gate: same choices
    torch.testing.assert_close(y16.float(), y32, atol=0.1, rtol=0.05)


@pytest.mark.gpu
def test_cuda_bf16_matches_cpu_fp32():
    layer = make_layer(routing="token", gate_fp32=True)  # as before MoELayerConfig (its default is the flag's, False)
    layer.eval()
    x, pad = batch()
    y_cpu, _ = layer(x, pad)
    layer_gpu = layer.cuda().to(torch.bfloat16)
    y_gpu, _ = layer_gpu(x.cuda().to(torch.bfloat16), pad.cuda())
    torch.testing.assert_close(y_gpu.float().cpu(), y_cpu, atol=0.1, rtol=0.05)


@pytest.mark.parametrize("policy", ["all", "random"])
def test_causal_token_routing_with_training_capacity_is_causal(policy):
    """Decoder (causal) token routing is dropless in training: position t never depends on > t."""
    layer = make_layer(routing="token", causal=True, capacity_factor=0.5, second_policy=policy)
    layer.train()
    x, _ = batch(bsz=6, length=9, pad_last=False)
    torch.manual_seed(5)
    y, stats = layer(x, None)
    assert stats.dropped.item() == 0
    for t in (2, 5):
        x2 = x.clone()
        x2[t:] = torch.randn_like(x2[t:]) * 3
        torch.manual_seed(5)  # the same random-policy draws
        y2, _ = layer(x2, None)
        torch.testing.assert_close(y2[:t], y[:t], atol=0, rtol=0)
    # the same layer, non-causal (encoder), does drop at this capacity
    enc = make_layer(routing="token", causal=False, capacity_factor=0.5, second_policy=policy)
    enc.train()
    assert enc(x, None)[1].dropped.item() > 0


def test_capacity_factor_not_positive_is_an_error_in_training():
    layer = make_layer(routing="token", capacity_factor=0.0)
    x, pad = batch()
    layer.train()
    with pytest.raises(ValueError, match="--moe-capacity-factor must be > 0.*--moe-dropless"):
        layer(x, pad)
    layer.eval()
    layer(x, pad)  # evaluation uses --moe-eval-capacity-factor
    ok = make_layer(routing="token", capacity_factor=-1.0, dropless=True)
    ok.train()
    assert ok(x, pad)[1].dropped.item() == 0


@pytest.mark.parametrize("routing,causal", [("token", False), ("sentence", False), ("sentence", True),
                                            ("sentence-pooled", False), ("sentence-pooled", True)])
def test_gate_fp32_under_cpu_autocast(routing, causal):
    """--moe-gate-fp32 under autocast (--amp): the gate runs in fp32, as without autocast."""
    layer = make_layer(routing=routing, causal=causal, gate_fp32=True)
    x, pad = batch()
    x_bld, mask = x.transpose(0, 1), ~pad
    ref, _ = layer.router(x_bld, mask, None)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits, _ = layer.router(x_bld, mask, None)
        r_amp, _ = layer.route(x_bld, mask, None)
    assert logits.dtype == torch.float32
    torch.testing.assert_close(logits, ref, atol=0, rtol=0)
    assert torch.equal(r_amp.expert_idx, layer.route(x_bld, mask, None)[0].expert_idx)
    # without the flag autocast does run the gate in bf16 (so the check above can fail)
    low = make_layer(routing=routing, causal=causal, gate_fp32=False)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert low.router(x_bld, mask, None)[0].dtype == torch.bfloat16


def test_layer_config_defaults_match_the_flags():
    """MoELayerConfig's defaults are the --moe-* flag defaults (gate_fp32 was True in the layer)."""
    from fairseq_taskmoe.config import MoEConfig

    flags, cfg = MoEConfig(), MoELayerConfig(D, FF, 4, "token", 2, F.relu)
    assert (cfg.capacity_factor, cfg.eval_capacity_factor, cfg.dropless, cfg.second_policy,
            cfg.gate_fp32) == (flags.moe_capacity_factor, flags.moe_eval_capacity_factor,
                               flags.moe_dropless, str(flags.moe_second_expert_policy),
                               flags.moe_gate_fp32)
    assert make_layer().router.gate_fp32 is False


def test_positional_fields_build_the_same_layer_as_the_config():
    torch.manual_seed(0)
    a = MoELayer(D, FF, 4, "token", 2, F.relu, capacity_factor=0.5)
    torch.manual_seed(0)
    b = MoELayer(MoELayerConfig(D, FF, 4, "token", 2, F.relu, capacity_factor=0.5))
    assert a.cfg == b.cfg
    for (na, pa), (nb, pb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert na == nb and torch.equal(pa, pb)


@pytest.mark.parametrize("kw,match", [
    (dict(routing="tokens"), "unknown routing 'tokens'; valid: token, sentence"),
    (dict(second_policy="top"), "--moe-second-expert-policy must be one of all, sampling, random"),
    (dict(top_k=3), "--moe-top-k must be 1 or 2, got 3"),
    (dict(num_experts=1, top_k=2), r"--moe-top-k \(2\) must be <= --moe-expert-count \(1\)"),
    (dict(num_experts=0, top_k=1), "--moe-expert-count must be >= 1, got 0"),
])
def test_layer_config_refuses_bad_values(kw, match):
    args = dict(embed_dim=D, ffn_dim=FF, num_experts=4, routing="token", top_k=2, activation_fn=F.relu)
    with pytest.raises(ValueError, match=match):
        MoELayerConfig(**{**args, **kw})
