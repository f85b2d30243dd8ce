"""Plain-PyTorch oracles that restate the papers' math. Every fast path is tested against these.

(a) The MMA adapter exactly in LaVIN's layout: grouped 1x1 `Conv1d`s over a [B, D, L]
    transpose, with the router reading token 0 of each sample.
(b) A whole-model oracle that literally prepends the modality token MOD to the sequence
    and masks it as LaVIN does: causal, no token attends to MOD, MOD attends only to itself.

Nothing here is fast and nothing here is clever; keep it that way.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

_CONV_SAFE_DTYPES = (torch.float32, torch.float64)


def rms_norm_reference(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm with Hugging Face LLaMA semantics: fp32 statistics, cast back, then scale."""
    input_dtype = x.dtype
    x32 = x.to(torch.float32) if x.dtype != torch.float64 else x
    normalized = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    return weight.to(input_dtype) * normalized.to(input_dtype)


def mma_adapter_reference(
    normed: torch.Tensor,            # [B, L, D] the norm's output n
    down_weight: torch.Tensor,       # [r, D]
    down_bias: torch.Tensor,         # [r]
    up_weight: torch.Tensor,         # [E, D, r/G]
    up_bias: torch.Tensor,           # [E, D]
    router_weights: torch.Tensor,    # [B, E] per sample, or [B, L, E] per token
    scale: float,
    h_mask: torch.Tensor | None = None,  # [B, L, r] dropout multipliers
) -> torch.Tensor:
    """The adapter in LaVIN's layout: y = n + s * sum_e w_e * (U_e h + c_e), h = A n + a."""
    compute_dtype = normed.dtype if normed.dtype in _CONV_SAFE_DTYPES else torch.float32
    n_t = normed.to(compute_dtype).transpose(1, 2)                              # [B, D, L]
    cast = dict(dtype=compute_dtype)
    h = F.conv1d(n_t, down_weight.to(**cast)[:, :, None], down_bias.to(**cast))  # [B, r, L]
    if h_mask is not None:
        h = h * h_mask.to(**cast).transpose(1, 2)
    groups = h.shape[1] // up_weight.shape[2]
    out = n_t
    for expert in range(up_weight.shape[0]):
        branch = F.conv1d(h, up_weight[expert].to(**cast)[:, :, None], up_bias[expert].to(**cast), groups=groups)
        weight = router_weights[..., expert].to(**cast)                            # [B] or [B, L]
        weight = weight[:, None, None] if weight.dim() == 1 else weight[:, None, :]
        out = out + branch * scale * weight
    return out.transpose(1, 2).contiguous().to(normed.dtype)


def norm_adapter_reference(x, norm_weight, eps, down_weight, down_bias, up_weight, up_bias,
                           router_weights, scale, h_mask=None):
    """RMSNorm followed by the MMA adapter with given per-sample router weights [B, E]."""
    normed = rms_norm_reference(x, norm_weight, eps)
    return mma_adapter_reference(normed, down_weight, down_bias, up_weight, up_bias, router_weights, scale, h_mask)


def norm_adapter_by_expert_reference(x, norm_weight, eps, down_weight, down_bias, up_weight, up_bias,
                                     expert_ids, scale, h_mask=None):
    """RMSNorm + adapter where each token picks one expert: expert_ids [B, L] (the MultiWay case)."""
    one_hot = F.one_hot(expert_ids.long(), up_weight.shape[0]).to(x.dtype)     # [B, L, E]
    return norm_adapter_reference(x, norm_weight, eps, down_weight, down_bias, up_weight, up_bias,
                                  one_hot, scale, h_mask)


def causal_attention_reference(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                               scale: float) -> torch.Tensor:
    """softmax(scale * q k^T, causal) v, written out: query [B, H, L, d], key / value [B, KV, L, d] (each key /
    value head serves H / KV query heads); returns [B, L, H, d]."""
    group = query.shape[1] // key.shape[1]
    key = key.repeat_interleave(group, dim=1)                                        # [B, H, L, d]
    value = value.repeat_interleave(group, dim=1)
    scores = scale * query @ key.transpose(-1, -2)                                   # [B, H, L, L]
    length = query.shape[2]
    future = torch.ones(length, length, dtype=torch.bool, device=query.device).triu(1)
    probs = torch.softmax(scores.masked_fill(future, float("-inf")), dim=-1)
    return (probs @ value).transpose(1, 2)


def rotary_reference(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """LLaMA's rotary embedding, written out: x [B, heads, L, d], cos / sin [B or 1, L, d];
    x * cos + rotate_half(x) * sin with rotate_half(x) = [-x[d/2:], x[:d/2]]."""
    half = x.shape[-1] // 2
    rotated_half = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos.unsqueeze(1) + rotated_half * sin.unsqueeze(1)


class LaVINAdapter(nn.Module):
    """LaVIN's RepAdapter_Router: grouped 1x1 Conv1d layers on a [B, D, L] transpose.

    The router reads token 0 of each sample (the modality token in LaVIN's sequence).
    Build one from a fastmma adapter with `from_adapter` to compare the two layouts.
    """

    def __init__(self, hidden_size, rank, groups, experts, scale, temperature, dropout=0.0):
        super().__init__()
        self.conv_down = nn.Conv1d(hidden_size, rank, 1, groups=1, bias=True)
        self.conv_up = nn.ModuleList(nn.Conv1d(rank, hidden_size, 1, groups=groups, bias=True) for _ in range(experts))
        self.expert_router = nn.Linear(hidden_size, experts)
        self.dropout = nn.Dropout(dropout)
        self.scale = scale
        self.temperature = temperature

    @classmethod
    def from_adapter(cls, adapter, dtype=torch.float64) -> "LaVINAdapter":
        ref = cls(adapter.hidden_size, adapter.rank, adapter.groups, adapter.experts, adapter.scale,
                  adapter.temperature, adapter.dropout)
        ref = ref.to(device=adapter.down.weight.device, dtype=dtype)
        with torch.no_grad():
            ref.conv_down.weight.copy_(adapter.down.weight[:, :, None])
            ref.conv_down.bias.copy_(adapter.down.bias)
            for expert, conv in enumerate(ref.conv_up):
                conv.weight.copy_(adapter.up_weight[expert][:, :, None])
                conv.bias.copy_(adapter.up_bias[expert])
            ref.expert_router.weight.copy_(adapter.router.weight)
            ref.expert_router.bias.copy_(adapter.router.bias)
        return ref.train(adapter.training)

    def forward(self, normed: torch.Tensor) -> torch.Tensor:
        n_t = normed.transpose(1, 2)                                                 # [B, D, L]
        router_weights = torch.softmax(self.expert_router(n_t[:, :, 0]) / self.temperature, dim=-1)  # [B, E]
        h = self.dropout(self.conv_down(n_t))                                        # [B, r, L]
        out = n_t
        for expert, conv in enumerate(self.conv_up):
            out = out + conv(h) * self.scale * router_weights[:, expert, None, None]
        return out.transpose(1, 2).contiguous()


class _OracleNorm(nn.Module):
    """Stands in for a patched norm: reference RMSNorm, then LaVIN's adapter routed by token 0."""

    def __init__(self, patched_norm, dtype):
        super().__init__()
        self.weight = patched_norm.weight
        self.eps = patched_norm.variance_epsilon
        self.adapter = LaVINAdapter.from_adapter(patched_norm.adapter, dtype=dtype)

    def forward(self, x):
        normed = rms_norm_reference(x, self.weight, self.eps)
        return self.adapter(normed.to(self.adapter.conv_down.weight.dtype)).to(x.dtype)


@contextmanager
def _oracle_norms(model, dtype):
    """Temporarily replace every patched norm of `model` by an `_OracleNorm`."""
    sites = model._fastmma.sites
    try:
        for site in sites:
            setattr(site.parent, site.attr, _OracleNorm(site.module, dtype))
        yield
    finally:
        for site in sites:
            setattr(site.parent, site.attr, site.module)


def modality_sequence_mask(attention_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Additive mask [B, 1, L+1, L+1] for a sequence [MOD] + tokens.

    attention_mask [B, L]: 1 for real tokens, 0 for padding. A query i sees key j when
    j <= i (causal), j is not MOD unless i is MOD, and key j is not padding.
    """
    batch, length = attention_mask.shape
    keys_valid = torch.cat([attention_mask.new_ones(batch, 1), attention_mask], dim=1).bool()  # [B, L+1]
    idx = torch.arange(length + 1, device=attention_mask.device)
    causal = idx[None, :] <= idx[:, None]                                       # [L+1, L+1]
    not_mod = (idx[None, :] != 0) | (idx[:, None] == 0)
    allowed = (causal & not_mod)[None] & keys_valid[:, None, :]                 # [B, L+1, L+1]
    allowed = allowed | torch.eye(length + 1, dtype=torch.bool, device=allowed.device)[None]  # pads see themselves
    mask = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device)
    mask.masked_fill_(~allowed, torch.finfo(dtype).min)
    return mask[:, None]


@torch.no_grad()
def oracle_causal_lm_logits(model, input_ids=None, attention_mask=None, modality=0, inputs_embeds=None):
    """Logits [B, L, V] of a fastmma-patched causal LM computed the literal LaVIN way.

    MOD = modality_embedding[modality] is prepended to the token embeddings (or to
    `inputs_embeds`), the whole sequence runs through the decoder with the MOD mask above,
    every adapter's router reads token 0 (MOD's normalized state) and MOD's logit row is
    dropped. Positions: MOD is 0 and token t is t + 1 (RoPE sees only relative positions).
    It runs in the model's own dtype: for an fp64 oracle, patch an fp64 copy of the model.
    """
    state = model._fastmma
    decoder = state.family.decoder(model)
    dtype = decoder.embed_tokens.weight.dtype
    token_states = decoder.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds   # [B, L, D]
    token_states = token_states.to(dtype)
    batch, length = token_states.shape[:2]
    device = token_states.device
    if attention_mask is None:
        attention_mask = torch.ones(batch, length, dtype=torch.long, device=device)
    modality_ids = torch.as_tensor(modality, device=device).expand(batch)
    mod_states = model.fastmma_modality_embedding(modality_ids).to(dtype)[:, None, :]       # [B, 1, D]
    hidden = torch.cat([mod_states, token_states], dim=1)                          # [B, L+1, D]
    position_ids = torch.arange(length + 1, device=device)[None].expand(batch, -1)
    mask = modality_sequence_mask(attention_mask, dtype)
    position_embeddings = decoder.rotary_emb(hidden, position_ids)
    with _oracle_norms(model, dtype):
        for layer in decoder.layers:
            hidden = layer(hidden, attention_mask=mask, position_ids=position_ids,
                           position_embeddings=position_embeddings, use_cache=False)
        hidden = decoder.norm(hidden)
    logits = model.get_output_embeddings()(hidden.to(model.get_output_embeddings().weight.dtype))
    return logits[:, 1:]
