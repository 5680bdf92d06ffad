"""Dense state dict -> upcycled ``transformer_taskmoe`` state dict: pure functions.

Legend: E experts, F FFN width, D model dim, N tasks.

Every MoE layer's E experts are copies of that layer's dense FFN
(``fc1.weight`` (F, D) -> ``fc1_weight`` (E, F, D), the ``StackedExperts``
layout), routers keep the initialisation of a freshly built model (training
from scratch), and every other tensor is the dense one. Why the result is the
dense function, in eval mode (the MoE layer computes ``sum_k w_k expert_k(x)``
and every expert is the same FFN, so it is ``(sum_k w_k) FFN(x)``):

- top-2: the two weights are renormalised to sum to 1 (eval is dropless for
  sentence / task routing and with ``--moe-dropless`` or eval capacity 0 for
  token routing), whatever the gate says: exact with the gate as from scratch.
- top-1: the weight is the gate probability p < 1 (Switch-style, so the gate
  learns from the task loss), which would scale every FFN output by p. The
  experts' ``fc2`` is divided by the p the gate gives at initialisation, which
  must then be the same for every routing unit:
  task routing: every task-gate row is a permutation of one row drawn as from
  scratch (each row is still a draw of i.i.d. N(0, 1) values, so tasks still
  spread over the experts at random), so every task's top probability is the
  same p*; fc2 / p*.
  token / sentence routing: p depends on the token, so only tied logits give
  one p: the gate starts at zero (p = 1/E, every token to expert 0 until the
  gate learns); fc2 * E.
"""

import re
from typing import Dict, List, Optional, Tuple

import torch
from torch import Tensor

from fairseq_taskmoe.config import SIDES, MoESettings

FFN_KEYS = (("fc1.weight", "fc1_weight"), ("fc1.bias", "fc1_bias"),
            ("fc2.weight", "fc2_weight"), ("fc2.bias", "fc2_bias"))
MOE_KEY = re.compile(r"^(encoder|decoder)\.layers\.(\d+)\.moe\.(.+)$")


def stack_ffn(ffn: Dict[str, Tensor], num_experts: int) -> Dict[str, Tensor]:
    """E independent copies of a dense FFN in ``StackedExperts`` layout.

    Args:
        ffn: fc1.weight (F, D), fc1.bias (F,), fc2.weight (D, F), fc2.bias (D,).
    Returns:
        fc1_weight (E, F, D), fc1_bias (E, F), fc2_weight (E, D, F), fc2_bias (E, D).
    """
    return {stacked: ffn[dense].unsqueeze(0).repeat(num_experts, *([1] * ffn[dense].dim()))
            for dense, stacked in FFN_KEYS}


def equal_top1_task_gate(gate: Tensor, generator: torch.Generator) -> Tuple[Tensor, float]:
    """Task-gate rows that all have the same top probability p*.

    Args:
        gate: (N, E) task logits as initialised from scratch; row 0 is the one kept.
    Returns:
        (N, E) rows, each a random permutation of ``gate[0]``, and p* (fp32 softmax, as the
        router computes it).
    """
    row = gate[0]  # (E,)
    rows = [row[torch.randperm(row.numel(), generator=generator)] for _ in range(gate.size(0))]
    p_star = float(torch.softmax(row.float(), dim=-1).max())
    return torch.stack(rows, 0).to(gate.dtype), p_star


def scale_fc2(experts: Dict[str, Tensor], scale: float) -> Dict[str, Tensor]:
    """``fc2`` weight and bias times ``scale`` (in float64, cast back): output times ``scale``."""
    out = dict(experts)
    for name in ("fc2_weight", "fc2_bias"):
        out[name] = (experts[name].double() * scale).to(experts[name].dtype)
    return out


def _layer_ffn(dense: Dict[str, Tensor], prefix: str, path: str) -> Dict[str, Tensor]:
    missing = [prefix + k for k, _ in FFN_KEYS if prefix + k not in dense]
    if missing:
        raise ValueError(f"{path}: the dense model has no FFN at {missing[0]} (an MoE layer needs the "
                         "dense layer's fc1/fc2 to copy)")
    return {k: dense[prefix + k] for k, _ in FFN_KEYS}


def upcycle_state(dense: Dict[str, Tensor], init: Dict[str, Tensor], moe: MoESettings,
                  generator: torch.Generator, path: str = "dense checkpoint"):
    """The upcycled state dict and one report entry per MoE layer.

    Args:
        dense: the dense model's state dict (as its model's ``state_dict()`` gives it).
        init: a freshly built upcycled model's ``state_dict()``: its keys and shapes are the
            target, its routers the initialisation.
    Returns:
        (state dict with every key of ``init``, [{"side", "layer", "routing", "experts",
        "gate", "fc2_scale"}]).
    """
    new, used, layers = {}, set(), {}
    for key, init_t in init.items():
        found = MOE_KEY.match(key)
        if found is None:
            if key not in dense:
                raise ValueError(f"{path}: the upcycled model has {key}, the dense model does not "
                                 "(do its args describe its weights?)")
            if tuple(dense[key].shape) != tuple(init_t.shape):
                raise ValueError(f"{path}: {key} has shape {tuple(dense[key].shape)}, the upcycled "
                                 f"model needs {tuple(init_t.shape)}")
            new[key] = dense[key]  # same tensor: ties between embeddings survive the save
            used.add(key)
            continue
        side, idx, rest = found.group(1), int(found.group(2)), found.group(3)
        layers.setdefault((side, idx), {})[rest] = init_t
    reports = []
    for (side, idx), parts in sorted(layers.items(), key=lambda kv: (SIDES.index(kv[0][0]), kv[0][1])):
        prefix = f"{side}.layers.{idx}."
        ffn = _layer_ffn(dense, prefix, path)
        used.update(prefix + k for k, _ in FFN_KEYS)
        num_experts = int(parts["experts.fc1_weight"].size(0))
        experts = stack_ffn(ffn, num_experts)
        router = {k[len("router."):]: v.clone() for k, v in parts.items() if k.startswith("router.")}
        report = {"side": side, "layer": idx, "routing": moe.routing(side), "experts": num_experts,
                  "gate": "scratch", "fc2_scale": 1.0}
        if moe.top_k == 1:
            if "task_gate.weight" in router:
                router["task_gate.weight"], p_star = equal_top1_task_gate(router["task_gate.weight"],
                                                                          generator)
                report.update(gate="task rows: permutations of one scratch row", top1_weight=p_star)
                scale = 1.0 / p_star
            else:
                router["wg.weight"] = torch.zeros_like(router["wg.weight"])
                report.update(gate="zero (tied logits)", top1_weight=1.0 / num_experts)
                scale = float(num_experts)
            experts = scale_fc2(experts, scale)
            report["fc2_scale"] = scale
        for name, tensor in experts.items():
            key = f"{prefix}moe.experts.{name}"
            if tuple(tensor.shape) != tuple(parts["experts." + name].shape):
                raise ValueError(f"{path}: {prefix}fc1/fc2 give experts of shape {tuple(tensor.shape)}, "
                                 f"the upcycled model needs {tuple(parts['experts.' + name].shape)}")
            new[key] = tensor
        for name, tensor in router.items():
            new[f"{prefix}moe.router.{name}"] = tensor
        reports.append(report)
    unused = [k for k in dense if k not in used]
    if unused:
        raise ValueError(f"{path}: the dense model has {unused[0]}, which the upcycled model has no "
                         f"place for ({len(unused)} such tensors)")
    return {k: new[k] for k in init}, reports


def perturb_experts(state: Dict[str, Tensor], reports: List[dict], std: float,
                    generator: Optional[torch.Generator] = None):
    """``--expert-noise``: add N(0, (std * s)^2) to every expert tensor, in place.

    s is the standard deviation of that tensor in the first expert (the upcycled
    dense FFN), so ``std`` is relative: 0.01 moves each weight by about 1% of the
    layer's typical weight. It breaks the experts' symmetry (identical experts get
    identical gradients from identical inputs) at the price of exactness.
    """
    if std <= 0:
        return
    for rep in reports:
        prefix = f"{rep['side']}.layers.{rep['layer']}.moe.experts."
        for _, name in FFN_KEYS:
            t = state[prefix + name]  # (E, ...)
            scale = float(t[0].float().std()) if t[0].numel() > 1 else float(t[0].abs().max())
            noise = torch.randn(t.shape, generator=generator, dtype=torch.float32)
            t.add_((noise * (std * scale)).to(t.dtype))
