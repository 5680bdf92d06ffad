"""Check a ``transformer_taskmoe`` checkpoint's args, layout and tensors against each other.

Runs on the loaded state dict before any model is built or any tensor
allocated, so a file whose args claim 10**9 experts (or layers) fails in
microseconds instead of at the OOM killer, and a shape mismatch is a clear
error instead of an IndexError deep inside extraction.
Legend: E experts, F expert FFN width, D model dim, N tasks.
"""

import re
from typing import Dict, Tuple

from torch import Tensor

SIDES = ("encoder", "decoder")


def _int_arg(ns, name: str, path: str) -> int:
    value = getattr(ns, name, None)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{path}: model arg {name}={value!r} is not an integer")
    return value


def _layers_in_state(model: Dict[str, Tensor], side: str) -> int:
    found = {int(m.group(1)) for k in model for m in [re.match(rf"{side}\.layers\.(\d+)\.", k)] if m}
    return max(found) + 1 if found else 0


def _shape(model, key: str, expected: Tuple[int, ...], path: str, why: str):
    t = model.get(key)
    if not isinstance(t, Tensor):
        raise ValueError(f"{path}: the model state has no tensor {key} ({why})")
    if tuple(t.shape) != tuple(expected):
        raise ValueError(f"{path}: {key} has shape {tuple(t.shape)}, but the model args ({why}) "
                         f"need {tuple(expected)}")


def check_moe_state(state: dict, model_ns, path: str):
    """Validate and return ``(MoESettings, {"encoder": layers, "decoder": layers})``.

    Raises ValueError naming the file and the first disagreement.
    """
    from fairseq_taskmoe.config import moe_config_from_args

    model = state["model"]
    num_layers = {}
    for side in SIDES:
        n = _int_arg(model_ns, f"{side}_layers", path)
        have = _layers_in_state(model, side)
        if n != have:
            raise ValueError(f"{path}: model args say {side}_layers={n}, the state has {have} {side} layers")
        num_layers[side] = n
    try:
        cfg = moe_config_from_args(model_ns)
    except (ValueError, TypeError) as err:
        raise ValueError(f"{path}: invalid MoE args in the checkpoint: {err}") from err
    top_k = cfg.top_k
    tasks = len(cfg.task_names)
    for side in SIDES:
        dim = _int_arg(model_ns, f"{side}_embed_dim", path)
        ffn = _int_arg(model_ns, f"{side}_ffn_embed_dim", path)
        plan = cfg.layer_plan(side, num_layers[side])  # the layout was checked by moe_config_from_args
        for i, spec in enumerate(plan):
            prefix = f"{side}.layers.{i}."
            if spec is None:
                _shape(model, prefix + "fc1.weight", (ffn, dim), path, f"{side} layer {i} dense, "
                       f"{side}_ffn_embed_dim={ffn}, {side}_embed_dim={dim}")
                continue
            (kind, value), = spec.items()
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"{path}: --moe-layout {side} layer {i}: {kind} must be an integer, "
                                 f"got {value!r}")
            if kind == "ffn_dim":
                if value < 1:
                    raise ValueError(f"{path}: --moe-layout {side} layer {i}: ffn_dim must be >= 1, got {value}")
                _shape(model, prefix + "fc1.weight", (value, dim), path,
                       f"--moe-layout {side} layer {i} ffn_dim={value}")
                continue
            if value < top_k:
                raise ValueError(f"{path}: --moe-layout / --moe-expert-count: {side} layer {i} has "
                                 f"{value} experts; it needs at least --moe-top-k={top_k}")
            why = f"{side} layer {i}: {value} experts, {side}_embed_dim={dim}"
            fc1 = model.get(prefix + "moe.experts.fc1_weight")
            if not isinstance(fc1, Tensor) or fc1.dim() != 3:
                raise ValueError(f"{path}: the model state has no (E, F, D) tensor "
                                 f"{prefix}moe.experts.fc1_weight ({why})")
            width = int(fc1.size(1))
            for name, shape in (("fc1_weight", (value, width, dim)), ("fc1_bias", (value, width)),
                                ("fc2_weight", (value, dim, width)), ("fc2_bias", (value, dim))):
                _shape(model, f"{prefix}moe.experts.{name}", shape, path, why)
            if cfg.routing(side) == "task":
                gate = prefix + "moe.router.task_gate.weight"
                _shape(model, gate, (tasks, value), path, f"{why}, {tasks} tasks in moe_task_names")
                if not bool(model[gate].isfinite().all()):
                    # top-k of a NaN row picks arbitrary experts (fairseq then trips an assert).
                    raise ValueError(f"{path}: {gate} holds NaN or infinite weights (a diverged "
                                     "training?), so its tasks have no defined experts; use an "
                                     "earlier checkpoint")
            else:
                _shape(model, prefix + "moe.router.wg.weight", (value, dim), path, why)
    return cfg, num_layers
