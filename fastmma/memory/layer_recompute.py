"""Selective recomputation of a frozen decoder layer: keep a few GEMM outputs, recompute the rest.

A frozen LLaMA-layout layer keeps, without recomputation, its two norm inputs, q, k, v, the
attention's log-sum-exp (and with SDPA its output), and the SwiGLU gate and up outputs. Run under
`recompute_layer`, the layer keeps its input and the outputs of the Linear layers named
"stashed" (v, o_proj, gate and up by default) and, with the "fastmma" attention, its log-sum-exp
(`LayerStash.attention`). In backward the layer's forward runs again inside a non-reentrant
activation checkpoint; each stashed Linear returns its kept output instead of multiplying again
and the attention skips its forward, so the recomputation costs q_proj, k_proj and the
element-wise ops (with SDPA also the attention forward). The MLP's down projection saves nothing
for backward (`frozen_linear`), so torch's early stop ends the recomputation before it.

The stashed outputs travel as saved tensors of one autograd node on the layer's output
(`_KeepStash`), so saved-tensor hooks (measurement, offloading) see them, and they are freed
with the graph. That node's backward runs before anything inside the layer (it sits on the
layer's output) and hands them back to the stash for the recomputation.
"""
from __future__ import annotations

import threading
from contextlib import contextmanager

import torch
from torch.utils.checkpoint import checkpoint

from ..autocast import linear_output, weight_in
from ..kv_cache import cache_in, without_cache

_ACTIVE = threading.local()
ATTENTION = "attention"


class LayerStash:
    """The stashed Linear outputs of one decoder-layer call: recorded in forward, replayed in backward."""

    def __init__(self):
        self.outputs: dict[object, torch.Tensor] = {}       # id(Linear) -> its output; (ATTENTION, id) -> lse
        self.replaying = False

    def linear(self, module, x: torch.Tensor) -> torch.Tensor:
        if not self.replaying:
            output = _FrozenLinear.apply(x, module)                       # saves nothing, as the replay
            self.outputs[id(module)] = output.detach()
            return output
        kept = self.outputs.get(id(module))
        if kept is None:
            raise RuntimeError("fastmma layer recomputation: a stashed Linear ran in backward without a kept output "
                               "(the layer's output node did not run first); disable MMAConfig.recompute_attention")
        return _ReplayedLinear.apply(x, module, kept)

    def attention(self, module, run):
        """run(kept_lse) -> (output, lse or None): the attention of `module`; the replay hands it the kept
        log-sum-exp, and its output is not needed then (o_proj's kept output stands in for what follows)."""
        key = (ATTENTION, id(module))
        if not self.replaying:
            output, lse = run(None)
            if lse is not None:
                self.outputs[key] = lse.detach()
            return output
        return run(self.outputs.get(key))[0]

    @contextmanager
    def active(self):
        previous = getattr(_ACTIVE, "stash", None)
        _ACTIVE.stash = self
        try:
            yield
        finally:
            _ACTIVE.stash = previous


def active_stash() -> LayerStash | None:
    return getattr(_ACTIVE, "stash", None)


class _FrozenLinear(torch.autograd.Function):
    """A frozen Linear module's output that saves nothing through saved-tensor hooks: dx = dy @ W.

    The module is held on ctx (its weight is a frozen parameter: there is nothing to recompute). Under
    autocast the GEMMs run in the autocast dtype, from the Linear's cached cast when it keeps one
    (MMAConfig.cache_autocast_weights); the backward GEMM casts the weight to the gradient's dtype, as
    autograd's mm backward does with the cast weight it saved.
    """

    @staticmethod
    def forward(ctx, x, module):
        ctx.module = module
        return linear_output(module, x)

    @staticmethod
    def backward(ctx, grad_output):
        return _input_grad(ctx, grad_output), None


class _ReplayedLinear(torch.autograd.Function):
    """y = x @ W.T with y already known (the forward's kept output); backward gives dx = dy @ W only."""

    @staticmethod
    def forward(ctx, x, module, kept_output):
        ctx.module = module
        return kept_output.view_as(kept_output)

    @staticmethod
    def backward(ctx, grad_output):
        return _input_grad(ctx, grad_output), None, None


def _input_grad(ctx, grad_output: torch.Tensor) -> torch.Tensor:
    return grad_output @ weight_in(ctx.module, grad_output.dtype)


def trains(linear) -> bool:
    """Whether a Linear's weight or bias takes gradients (then it is not frozen: autograd saves its input)."""
    return linear.weight.requires_grad or (linear.bias is not None and linear.bias.requires_grad)


def frozen_linear(module, x: torch.Tensor) -> torch.Tensor:
    if trains(module):
        return linear_output(module, x)
    return _FrozenLinear.apply(x, module)


class _KeepStash(torch.autograd.Function):
    """Identity on the layer output that holds the stash's tensors as saved tensors until backward."""

    @staticmethod
    def forward(ctx, stash, output, *kept):
        ctx.stash = stash
        ctx.keys = list(stash.outputs)
        ctx.save_for_backward(*kept)
        stash.outputs = {}                         # from here on the graph holds them
        return output.view_as(output)

    @staticmethod
    def backward(ctx, grad_output):
        ctx.stash.outputs = dict(zip(ctx.keys, ctx.saved_tensors))
        ctx.stash.replaying = True
        return (None, grad_output) + (None,) * len(ctx.keys)


def recompute_layer(forward, hidden_states: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    """forward(hidden_states, *args, **kwargs) keeping only its input and the stashed Linear outputs."""
    stash = LayerStash()

    def run(*run_args, **run_kwargs):
        if stash.replaying and cache_in(run_kwargs) is not None:
            run_kwargs = without_cache(run_kwargs)               # the cache already holds this call's k, v
        with stash.active():
            return forward(*run_args, **run_kwargs)

    output = checkpoint(run, hidden_states, *args, use_reentrant=False, **kwargs)
    if not torch.is_tensor(output):
        raise TypeError(f"fastmma layer recomputation expects the decoder layer to return a tensor; got "
                        f"{type(output).__name__} (this transformers version); disable MMAConfig.recompute_attention")
    return _KeepStash.apply(stash, output, *stash.outputs.values())
