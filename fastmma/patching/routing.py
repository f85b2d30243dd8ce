"""Modality routing: the router weights of every adapter, per modality.

In LaVIN a modality token MOD is prepended to the sequence; no token attends to it and
it attends only to itself. Its hidden state at every layer therefore depends only on
the modality id, and so do all router weights. We compute them with a *modality pass*:
the modality embeddings alone, as a batch of 1-token sequences, run through the decoder
stack (with gradients while training). Each adapter stores its router weights
[num_modalities, E] in a table; the main pass looks rows up by each sample's modality id.
MOD never enters the main sequence, its mask or the KV cache.

The tables and modality ids of the latest forward stay in place until the next forward,
so that gradient-checkpointing recomputation during backward sees the same values.
"""
from __future__ import annotations

import torch
from torch import nn

from .. import reference
from .single_token import single_token_layer, supports_single_token
from ..ops import backend
from ..ops.norm_adapter import OP_FOLDED, FoldedAdapter, fold_tables

_MODALITY_PASS = "modality"
_MAIN_PASS = "main"


class RoutingContext:
    """Shared by every patched norm of one model."""

    def __init__(self, num_sites: int, num_modalities: int):
        self.num_modalities = num_modalities
        self.tables: list[torch.Tensor | None] = [None] * num_sites     # each [num_modalities, E]
        self.phase: str | None = None
        self.modality_ids: torch.Tensor | None = None                   # [B]
        self._cache_key = None
        self._folded: dict[tuple[int, torch.dtype], FoldedAdapter] = {}
        self._has_folded_backend: dict[str, bool] = {}            # per device type, reset every forward

    def router_weights(self, norm: nn.Module, hidden_states: torch.Tensor) -> torch.Tensor:
        """Router weights [B, E] for the batch now flowing through `norm`."""
        if self.phase == _MODALITY_PASS:
            modality_state = reference.rms_norm_reference(hidden_states[:, 0], norm.weight, norm.variance_epsilon)
            weights = norm.adapter.router_weights(modality_state)                 # [num_modalities, E]
            self.tables[norm.site_index] = weights
            return weights
        if self.phase == _MAIN_PASS:
            ids = self.modality_ids
            if ids.shape[0] != hidden_states.shape[0]:
                raise RuntimeError(f"the patched model's forward was given {ids.shape[0]} modality ids but a layer "
                                   f"received a batch of {hidden_states.shape[0]}")
            return self.tables[norm.site_index][ids]
        raise RuntimeError("a fastmma-patched layer ran outside the patched model's forward; call the top-level "
                           "model (e.g. model(input_ids, modality=...)) so the router weights are computed first")

    def folded_adapter(self, norm: nn.Module, hidden_states: torch.Tensor) -> FoldedAdapter | None:
        """`norm`'s adapter with its router rows folded in, when the main pass may use them; else None.

        Only for inference with cached tables (no autograd, no dropout): generation and evaluation.
        Built once per site and dtype, dropped whenever the tables are recomputed.
        """
        if (self.phase != _MAIN_PASS or self._cache_key is None or torch.is_grad_enabled()
                or norm.adapter.applies_dropout or not self._folded_backend(hidden_states.device.type)):
            return None
        compute = torch.float64 if hidden_states.dtype == torch.float64 else torch.float32
        key = (norm.site_index, compute)
        folded = self._folded.get(key)
        if folded is None:
            adapter = norm.adapter
            folded = fold_tables(norm.weight, norm.variance_epsilon, adapter.down.weight, adapter.down.bias,
                                 adapter.up_weight, adapter.up_bias, self.tables[norm.site_index], adapter.scale,
                                 compute)
            self._folded[key] = folded
        return folded

    def _folded_backend(self, device_type: str) -> bool:
        if device_type not in self._has_folded_backend:
            self._has_folded_backend[device_type] = backend.has_implementation(OP_FOLDED, device_type)
        return self._has_folded_backend[device_type]

    def refresh_tables(self, model: nn.Module, params: list[torch.Tensor]) -> None:
        """Run the modality pass, or reuse the last tables when nothing they depend on changed.

        Reuse happens only without autograd (generation, evaluation): then the tables are a
        pure function of the parameters, tracked by their in-place version counters.
        """
        if torch.is_grad_enabled():
            self._cache_key = None
            self._run_modality_pass(model)
            return
        key = tuple(p._version for p in params) + (model.training,)
        if key != self._cache_key or any(t is None or t.requires_grad for t in self.tables):
            self._run_modality_pass(model)
            self._cache_key = key

    def _run_modality_pass(self, model: nn.Module) -> None:
        self._folded.clear()
        state = model._fastmma
        decoder = state.family.decoder(model)
        dtype = decoder.embed_tokens.weight.dtype
        device = decoder.embed_tokens.weight.device
        ids = torch.arange(self.num_modalities, device=device)
        hidden = model.fastmma_modality_embedding(ids).to(dtype)[:, None, :]               # [M, 1, D]
        position_ids = torch.zeros(self.num_modalities, 1, dtype=torch.long, device=device)
        position_embeddings = decoder.rotary_emb(hidden, position_ids)
        layers = decoder.layers[: state.last_site_layer + 1]
        # The pass is a few tokens: never checkpoint it, or its recomputation in backward
        # would run while the main pass's routing is in place.
        checkpointing = [getattr(layer, "gradient_checkpointing", False) for layer in layers]
        self.phase = _MODALITY_PASS
        try:
            for layer in layers:
                if supports_single_token(layer):
                    hidden = single_token_layer(layer, hidden)
                    continue
                if hasattr(layer, "gradient_checkpointing"):
                    layer.gradient_checkpointing = False
                hidden = layer(hidden, attention_mask=None, position_ids=position_ids,
                               position_embeddings=position_embeddings, use_cache=False)
        finally:
            self.phase = None
            for layer, was_checkpointing in zip(layers, checkpointing):
                if hasattr(layer, "gradient_checkpointing"):
                    layer.gradient_checkpointing = was_checkpointing

    def begin_main_pass(self, modality_ids: torch.Tensor) -> None:
        """Route the batch about to run by `modality_ids` [B] (kept until the next forward)."""
        self.phase = _MAIN_PASS
        self.modality_ids = modality_ids
        self._has_folded_backend.clear()


def modality_ids_for(modality, batch_size: int, num_modalities: int, device) -> torch.Tensor:
    """Validate `modality=` (None, int or LongTensor [B]) and return a LongTensor [B]."""
    if modality is None:
        modality = 0
    if isinstance(modality, bool) or (isinstance(modality, float)):
        raise TypeError(f"modality must be an int or an integer tensor of shape [batch]; got {modality!r}")
    ids = torch.as_tensor(modality, device=device)
    if ids.dtype.is_floating_point or ids.dtype == torch.bool or ids.is_complex():
        raise TypeError(f"modality must hold integer ids (0 = text, 1 = image); got dtype {ids.dtype}")
    if ids.dim() == 0:
        ids = ids.expand(batch_size)
    elif ids.shape != (batch_size,):
        raise ValueError(f"modality has shape {tuple(ids.shape)}; expected an int or a tensor of shape "
                         f"[{batch_size}] (one id per sample)")
    ids = ids.long()
    low, high = int(ids.min()), int(ids.max())
    if low < 0 or high >= num_modalities:
        raise ValueError(f"modality ids must be in [0, {num_modalities - 1}] (the config has "
                         f"num_modalities={num_modalities}); got values from {low} to {high}")
    return ids
