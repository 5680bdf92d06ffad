"""``--amp`` loss scaling that every expert-parallel rank agrees on.

fairseq's ``AMPOptimizer`` keeps a per-process ``torch.cuda.amp.GradScaler``.
Its overflow flag (``found_inf``) comes from this rank's grads only. Dense
grads are all-reduced, so they agree, but expert grads are not (each rank
holds different experts): an inf in one rank's experts made that rank skip
the step and halve its scale while the others stepped and kept theirs, and
the replicated params drifted apart for good.

``ExpertParallelGradScaler`` all-reduces ``found_inf`` (MAX over all ranks) in
``unscale_`` before ``step`` and ``update`` read it, as torch's
``ShardedGradScaler`` does for FSDP: one decision per step, the same on every
rank. It also unscales the grads once. ``AMPOptimizer.clip_grad_norm`` calls
``unscale_(torch_optimizer)`` and ``AMPOptimizer.step`` then calls
``scaler.step(fairseq_optimizer)``, a different object, so the stock scaler
unscales a second time and Adam receives ``g / scale`` (its ``eps`` then
weighs ``scale`` times more, and moments saved across a scale change mix two
scales). Here a fairseq optimizer and the torch optimizer it wraps share one
per-optimizer record, so ``step`` sees the grads already unscaled.

``install_expert_parallel_scaler(optimizer)`` swaps it into fairseq's
``AMPOptimizer`` around ``--optimizer adam_ep`` (any W, so that W = 1 and W > 1
step the same way), keeping the scale, growth settings and growth tracker.
fairseq builds ``AMPOptimizer`` itself, and rebuilds it on every checkpoint
load, so the plugin task calls this at the start of every ``train_step``
(``tasks/translation_multi_taskmoe.py``); with W > 1 and ``--amp`` another task
is refused at start (``sharding.check_training_args``). fairseq 0.12.3 does
not save the AMP scale in checkpoints: every rank resumes at
``--fp16-init-scale``, so ranks agree after a resume too.
"""

import torch
import torch.distributed as dist
from fairseq.optim import AMPOptimizer, FairseqOptimizer

from fairseq_taskmoe.parallel.optimizer import FairseqAdamEP


def _torch_optimizer(optimizer):
    """The ``torch.optim.Optimizer`` a fairseq optimizer wraps (itself otherwise)."""
    return optimizer.optimizer if isinstance(optimizer, FairseqOptimizer) else optimizer


def _world():
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


class ExpertParallelGradScaler(torch.amp.GradScaler):
    """``torch.amp.GradScaler`` whose overflow decision is all-reduced over the ranks."""

    def unscale_(self, optimizer):
        inner = _torch_optimizer(optimizer)
        super().unscale_(inner)
        if not self._enabled or _world() == 1:
            return
        record = self._per_optimizer_states[id(inner)]["found_inf_per_device"]
        # One collective per rank whatever devices its grads live on (a rank with no
        # grad at all still takes part): the flags summed here, the MAX over ranks.
        total = torch.zeros((), dtype=torch.float32, device=self._scale.device)
        for flag in record.values():
            total += flag.to(total.device).reshape(())
        dist.all_reduce(total, op=dist.ReduceOp.MAX)
        for flag in record.values():
            flag.copy_(total.to(flag.device).reshape(flag.shape))
        if not record:
            record[total.device] = total

    def step(self, optimizer, *args, **kwargs):
        inner = _torch_optimizer(optimizer)
        if self._enabled and inner is not optimizer:
            # One record for the wrapper and the optimizer it wraps: unscaled once, and step
            # reads the all-reduced flag. update() then sees the record twice; a flag counted
            # twice still means "skip" (> 0) or "no inf" (0).
            self._per_optimizer_states[id(optimizer)] = self._per_optimizer_states[id(inner)]
        return super().step(optimizer, *args, **kwargs)


def expert_parallel_scaler_like(old: torch.amp.GradScaler) -> ExpertParallelGradScaler:
    """A new ``ExpertParallelGradScaler`` with ``old``'s device, settings and state
    (call it between steps: after ``update()``, before the next ``scale()``)."""
    if not old.is_enabled():
        return ExpertParallelGradScaler(old._device, enabled=False)
    new = ExpertParallelGradScaler(old._device, init_scale=old._init_scale,
                                   growth_factor=old.get_growth_factor(),
                                   backoff_factor=old.get_backoff_factor(),
                                   growth_interval=old.get_growth_interval())
    new.load_state_dict(old.state_dict())
    return new


def install_expert_parallel_scaler(optimizer) -> bool:
    """Give fairseq's ``AMPOptimizer`` around ``adam_ep`` an ``ExpertParallelGradScaler``
    (once per optimizer object: a no-op when it has one, or is not such an optimizer).
    Returns whether ``optimizer`` now holds one."""
    if not isinstance(optimizer, AMPOptimizer) or not isinstance(optimizer.fp32_optimizer,
                                                                  FairseqAdamEP):
        return False
    if not isinstance(optimizer._grad_scaler, ExpertParallelGradScaler):
        optimizer._grad_scaler = expert_parallel_scaler_like(optimizer._grad_scaler)
    return True
