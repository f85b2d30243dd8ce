"""Peak training memory of fastmma on a GPU, from the model's dimensions.

    peak = weights + adapter states + saved activations + max(logits chunk, backward working set) + overhead

- weights: every base parameter in `dtype` (frozen; no gradient, no optimizer state);
- adapter states: the fastmma parameters in fp32 with their gradients and AdamW's two moments (16 B each);
- saved activations: what the forward keeps for backward, per token per layer (below), times layers and
  tokens, plus what is kept outside the layers (final norm input and rstd, the chunked loss's
  gradient [tokens, D]) and per-layer constants (the adapter's fp32 tables);
- logits chunk: the chunked loss holds one [chunk, vocab] fp32 buffer (plus its `dtype` copy when the
  model is not fp32), chunk = `chunked_loss.default_chunk_tokens` (a tenth of the tokens for an fp32 model,
  a sixteenth otherwise); with the C++ kernel on CPU (`fused_loss=True`) one [chunk, vocab] buffer in
  `dtype`, an eighth of the tokens; it lives at the end of the forward;
- backward working set (an allowance): while one layer runs backward it holds gradients about as big as
  what it saved, plus two [tokens, D] gradients of the residual stream; with checkpointing the layer is
  first recomputed, so its full saved set comes back as well (with recompute_attention, what it did not
  keep, and the recomputation's temporaries: [tokens, I] + 2 [tokens, D]). That includes two [tokens, I] temporaries
  of autograd's SwiGLU backward, which the fused C++ kernel on CPU does not make (`fused_swiglu=True`
  takes them out). With `recompute_mlp` the MLP's backward holds at least its recomputed gate and up and
  their gradients (four [tokens, I]; six with autograd's SwiGLU);
- overhead (an allowance, GPU only): 0.75 GiB for the CUDA context and cuBLAS/attention workspaces, and
  5% of the activations and working set for allocator fragmentation.

Saved per token per layer (s = bytes per element of `dtype`; H, KV heads of size hd; D hidden; I
intermediate; r adapter rank), what fastmma's layers keep with SDPA or flash-attn and no padding mask:

    adapted norm (fused op)     x: D*s, rstd: 4, h: 4r, dropout mask: 4r (when dropout > 0), row index: 8
    plain norm (lean op)        x: D*s, rstd: 4          (recompute_norm=False and s < 4: x in fp32, 4D)
    attention (SDPA / flash)    q: H*hd*s, k and v: KV*hd*s each, output: H*hd*s, logsumexp: 4H
                                (fastmma's CPU attention, `fused_attention=True`: no output)
    SwiGLU MLP                  gate and up: 2I*s        (recompute_swiglu=False: 3I*s; recompute_mlp: D*s)
    with checkpointing          the layer input only: D*s (the rest is recomputed in backward); with
                                `every_n_layers=n` only layers 0, n, 2n, ... are checkpointed

What a layer really keeps (`kept_per_token_per_layer`): the whole list above without recomputation;
with `recompute_attention` (the default) its input, v, o_proj's output, and gate and up: (2D + KV*hd + 2I)*s
(without gate and up under `recompute_mlp`), plus the attention's logsumexp 4H with fastmma's CPU
attention, the rest coming back while the layer runs backward; with checkpointing its input alone.

These are the tensors `fastmma.memory.measure` finds on CPU; tests/test_memory_estimate.py checks the
formula against it. Frozen Linear layers keep no input (autograd saves only what the needed gradients
use). With a padding mask, SDPA gets k and v expanded to H heads (not modelled).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ..checks import positive_int, require_positive_int
from ..config import MMAConfig
from .chunked_loss import default_chunk_tokens

GIB = 1024 ** 3
GPU_CONTEXT_BYTES = int(0.75 * GIB)
FRAGMENTATION = 0.05
ADAPTER_STATE_BYTES = 16          # fp32 parameter + gradient + AdamW exp_avg + exp_avg_sq

# Dimensions from the papers / released configs (no download needed).
PRESETS = {
    "llama-7b": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                     num_key_value_heads=32, vocab_size=32000, tie_word_embeddings=False),
    "llama-13b": dict(hidden_size=5120, intermediate_size=13824, num_hidden_layers=40, num_attention_heads=40,
                      num_key_value_heads=40, vocab_size=32000, tie_word_embeddings=False),
    "smollm2-135m": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                         num_key_value_heads=3, vocab_size=49152, tie_word_embeddings=True),
}

_DTYPES = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
           "fp16": torch.float16, "float16": torch.float16}


@dataclass(frozen=True)
class ModelDims:
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    vocab_size: int
    head_dim: int
    tie_word_embeddings: bool = False
    attention_bias: bool = False
    mlp_bias: bool = False

    def base_parameters(self) -> int:
        d, i, hd = self.hidden_size, self.intermediate_size, self.head_dim
        q, kv = self.num_attention_heads * hd, self.num_key_value_heads * hd
        attention = d * q + 2 * d * kv + q * d + ((q + 2 * kv + d) if self.attention_bias else 0)
        mlp = 3 * d * i + ((2 * i + d) if self.mlp_bias else 0)
        layer = attention + mlp + 2 * d
        embeddings = self.vocab_size * d * (1 if self.tie_word_embeddings else 2)
        return self.num_hidden_layers * layer + embeddings + d


def model_dims(model_config) -> ModelDims:
    """ModelDims from a transformers config, a dict of config.json keys, a preset name or a config.json path."""
    if isinstance(model_config, ModelDims):
        return model_config
    if isinstance(model_config, (str, Path)):
        model_config = _load_named(str(model_config))
    if isinstance(model_config, dict):
        values = model_config
    elif hasattr(model_config, "to_dict"):
        values = model_config.to_dict()
    else:
        raise TypeError(f"model_config must be a transformers config, a dict of config.json keys, a preset name "
                        f"({', '.join(PRESETS)}) or the path of a config.json; got {type(model_config).__name__}")
    values = dict(values.get("text_config") or {}, **{k: v for k, v in values.items() if k != "text_config"}) \
        if isinstance(values.get("text_config"), dict) else values
    missing = [k for k in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                           "vocab_size") if values.get(k) is None]
    if missing:
        raise ValueError(f"the model config lacks {missing}; give a LLaMA-layout config (Llama, Mistral, Qwen2)")
    _require_positive_ints(values, ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                                    "vocab_size", "num_key_value_heads", "head_dim"))
    heads = int(values["num_attention_heads"])
    return ModelDims(
        hidden_size=int(values["hidden_size"]), intermediate_size=int(values["intermediate_size"]),
        num_hidden_layers=int(values["num_hidden_layers"]), num_attention_heads=heads,
        num_key_value_heads=int(values.get("num_key_value_heads") or heads), vocab_size=int(values["vocab_size"]),
        head_dim=int(values.get("head_dim") or values["hidden_size"] // heads),
        tie_word_embeddings=bool(values.get("tie_word_embeddings", False)),
        attention_bias=bool(values.get("attention_bias", False)) or values.get("model_type") == "qwen2",
        mlp_bias=bool(values.get("mlp_bias", False)))


def _require_positive_ints(values: dict, keys) -> None:
    for key in keys:
        value = values.get(key)
        if value is not None and not positive_int(value):
            raise ValueError(f"the model config's {key}={value!r} must be a positive integer")


def _load_named(spec: str) -> dict:
    key = spec.strip().lower()
    if key in PRESETS:
        return dict(PRESETS[key])
    path = Path(spec)
    if path.is_dir():
        path = path / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{spec!r} is neither a preset ({', '.join(PRESETS)}) nor a config.json or a "
                                f"folder holding one")
    try:
        values = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from None
    if not isinstance(values, dict):
        raise ValueError(f"{path} holds a JSON {type(values).__name__}, not a config object")
    return values


def dtype_of(dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        if dtype not in set(_DTYPES.values()):
            raise ValueError(f"dtype {dtype} is not a training dtype; use fp32, bf16 or fp16")
        return dtype
    if str(dtype).lower() in _DTYPES:
        return _DTYPES[str(dtype).lower()]
    raise ValueError(f"unknown dtype {dtype!r}; use one of fp32, bf16, fp16")


def saved_per_token_per_layer(dims: ModelDims, dtype=torch.bfloat16, config: MMAConfig | None = None,
                              training: bool = True, fused_attention: bool = False) -> dict[str, float]:
    """Bytes one decoder layer keeps for backward per token, by tensor (no checkpointing). See the module docstring.

    fused_attention: the attention is fastmma's CPU one (its backward needs no attention output)."""
    config = config or MMAConfig()
    size = torch.empty((), dtype=dtype_of(dtype)).element_size()
    d, hd = dims.hidden_size, dims.head_dim
    out = {}
    for target, name in (("attn", "attention norm"), ("ffn", "FFN norm")):
        if target in config.targets:
            out[f"{name} + adapter: x"] = d * size
            out[f"{name} + adapter: rstd"] = 4
            out[f"{name} + adapter: h"] = 4 * config.rank
            if training and config.dropout > 0:
                out[f"{name} + adapter: dropout mask"] = 4 * config.rank
            out[f"{name} + adapter: row index"] = 8
        else:
            out[f"{name}: x"] = d * (4 if (size < 4 and not config.recompute_norm) else size)
            out[f"{name}: rstd"] = 4
    out["attention: q"] = dims.num_attention_heads * hd * size
    out["attention: k"] = dims.num_key_value_heads * hd * size
    out["attention: v"] = dims.num_key_value_heads * hd * size
    if not fused_attention:
        out["attention: output"] = dims.num_attention_heads * hd * size
    out["attention: logsumexp"] = 4 * dims.num_attention_heads
    if config.recompute_mlp:
        out["MLP: input"] = d * size
    else:
        out["MLP: gate, up"] = 2 * dims.intermediate_size * size
        if not config.recompute_swiglu:
            out["MLP: silu(gate)"] = dims.intermediate_size * size
    return out


def kept_per_token_per_layer(dims: ModelDims, dtype=torch.bfloat16, config: MMAConfig | None = None,
                             checkpointing: bool = False, fused_attention: bool = False) -> float:
    """Bytes one decoder layer really keeps per token: its input with checkpointing; its input, v, o_proj's
    output (gate and up unless recompute_mlp, the attention's logsumexp with fused_attention) with
    recompute_attention; else everything it saves."""
    config = config or MMAConfig()
    size = torch.empty((), dtype=dtype_of(dtype)).element_size()
    d, hd = dims.hidden_size, dims.head_dim
    if checkpointing:
        return d * size
    if config.recompute_attention:
        stashed_mlp = 0 if config.recompute_mlp else 2 * dims.intermediate_size
        logsumexp = 4 * dims.num_attention_heads if fused_attention else 0
        return (2 * d + dims.num_key_value_heads * hd + stashed_mlp) * size + logsumexp
    return sum(saved_per_token_per_layer(dims, dtype, config, fused_attention=fused_attention).values())


def per_layer_constant_bytes(dims: ModelDims, batch: int, dtype=torch.bfloat16, config: MMAConfig | None = None) -> int:
    """Bytes per layer that do not grow with the sequence: the adapter's fp32 tables (per adapted norm:
    the router weights [B, E] and the per-sample table [B, r/G, D]; the norm weight in fp32 when the model
    is not). The up-projections the router mixes are fp32 parameters: kept, not counted."""
    config = config or MMAConfig()
    size = torch.empty((), dtype=dtype_of(dtype)).element_size()
    d, per_group = dims.hidden_size, config.rank // config.groups
    site = 4 * (batch * config.experts + batch * per_group * d)
    site += 4 * d if size < 4 else 0
    return len(config.targets) * site


@dataclass
class MemoryEstimate:
    """All sizes in bytes. `peak_bytes` is what a GPU needs; `peak_allocated_bytes` leaves out the overhead."""

    model: str
    batch: int
    seq_len: int
    dtype: str
    checkpointing: bool
    checkpointed_layers: int                   # how many layers are recomputed (all, or every n-th)
    weights_bytes: int
    adapter_parameters: int
    adapter_state_bytes: int
    saved_per_token_per_layer: float           # bytes, no checkpointing
    saved_per_token_per_layer_kept: float      # what a layer really keeps, on average over the layers
    layers_saved_bytes: int
    outside_saved_bytes: int
    activation_bytes: int                      # layers + outside + per-layer constants + modality pass
    logits_chunk_bytes: int
    backward_working_bytes: int
    overhead_bytes: int
    peak_allocated_bytes: int
    peak_bytes: int
    breakdown: dict = field(default_factory=dict)

    def fits(self, gpu_bytes: float) -> bool:
        return self.peak_bytes <= gpu_bytes

    def to_dict(self) -> dict:
        return asdict(self)


def estimate_memory(model_config, batch: int, seq_len: int, dtype=torch.bfloat16, checkpointing: bool = False,
                    config: MMAConfig | None = None, gpu_overhead: bool = True,
                    fused_swiglu: bool = False, every_n_layers: int = 1, fused_loss: bool = False,
                    fused_attention: bool = False) -> MemoryEstimate:
    """Predict peak training memory of fastmma for `batch` sequences of `seq_len` tokens (see module docstring).

    model_config: a transformers config (LlamaConfig, ...), a dict of its keys, a preset name
    ("llama-7b", "llama-13b", "smollm2-135m") or the path of a config.json (or its folder).
    dtype: the frozen base's dtype (torch dtype or "bf16"/"fp16"/"fp32"). config: the MMAConfig.
    gpu_overhead: add the CUDA context / workspaces and fragmentation allowance (False for CPU).
    fused_swiglu: the SwiGLU runs fastmma's fused kernel (CPU with the C++ extension), not autograd's ops.
    fused_loss: the chunked loss runs fastmma's in-place kernel (CPU with the C++ extension).
    fused_attention: the attention is fastmma's CPU one (attn_implementation "fastmma"): no saved output.
    every_n_layers: with checkpointing, only layers 0, n, 2n, ... are recomputed
    (`enable_checkpointing(model, every_n_layers=n)`); the others keep what they keep without it.
    """
    for name, value in (("batch", batch), ("seq_len", seq_len)):
        require_positive_int(name, value)
    if config is not None and not isinstance(config, MMAConfig):
        raise TypeError(f"config must be an MMAConfig (MMAConfig.from_dict(...) for a dict); got "
                        f"{type(config).__name__}")
    require_positive_int("every_n_layers", every_n_layers, " (1 = every layer)")
    dims = model_dims(model_config)
    config = config or MMAConfig()
    config.check_hidden_size(dims.hidden_size)
    torch_dtype = dtype_of(dtype)
    size = torch.empty((), dtype=torch_dtype).element_size()
    tokens = batch * seq_len
    layers, d = dims.num_hidden_layers, dims.hidden_size

    per_token = saved_per_token_per_layer(dims, torch_dtype, config, fused_attention=fused_attention)
    full_per_token = sum(per_token.values())
    checkpointed = -(-layers // every_n_layers) if checkpointing else 0           # layers 0, n, 2n, ...
    plain_kept = kept_per_token_per_layer(dims, torch_dtype, config,              # the layers not checkpointed
                                          fused_attention=fused_attention)
    layers_saved = tokens * (checkpointed * d * size + (layers - checkpointed) * plain_kept)
    constants_kept = 0 if plain_kept != full_per_token else \
        (layers - checkpointed) * per_layer_constant_bytes(dims, batch, torch_dtype, config)
    modality_pass = layers * config.num_modalities * full_per_token + \
        layers * per_layer_constant_bytes(dims, config.num_modalities, torch_dtype, config)
    outside = tokens * (2 * d * size + 4)                 # final norm input + rstd, chunked loss's gradient
    activations = layers_saved + constants_kept + modality_pass + outside

    chunk = default_chunk_tokens(tokens, torch_dtype, in_place=fused_loss)
    logits_chunk = chunk * dims.vocab_size * (size if fused_loss else 4 + (size if size < 4 else 0))
    plain_constant = constants_kept // max(1, layers - checkpointed)
    backward = _backward_bytes(dims, config, tokens, size, full_per_token, (plain_kept, plain_constant),
                               fused_swiglu, checkpointing, every_n_layers, fused_attention)

    weights = dims.base_parameters() * size
    sites = layers * len(config.targets)
    per_site = config.rank * d + config.rank + config.experts * d * (config.rank // config.groups) + \
        config.experts * d + config.experts * d + config.experts
    adapter_parameters = sites * per_site + config.num_modalities * d
    adapter_states = adapter_parameters * ADAPTER_STATE_BYTES

    peak_allocated = weights + adapter_states + activations + max(logits_chunk, backward)
    overhead = GPU_CONTEXT_BYTES + int(FRAGMENTATION * (activations + backward)) if gpu_overhead else 0
    name = str(model_config) if isinstance(model_config, (str, Path)) else \
        getattr(model_config, "model_type", None) or "custom"
    return MemoryEstimate(
        model=str(name), batch=batch, seq_len=seq_len, dtype=str(torch_dtype).replace("torch.", ""),
        checkpointing=checkpointing, checkpointed_layers=checkpointed, weights_bytes=weights, adapter_parameters=adapter_parameters,
        adapter_state_bytes=adapter_states, saved_per_token_per_layer=full_per_token,
        saved_per_token_per_layer_kept=layers_saved / (tokens * layers), layers_saved_bytes=layers_saved,
        outside_saved_bytes=outside, activation_bytes=activations, logits_chunk_bytes=logits_chunk,
        backward_working_bytes=backward, overhead_bytes=overhead, peak_allocated_bytes=peak_allocated,
        peak_bytes=peak_allocated + overhead, breakdown=per_token)


def _backward_bytes(dims: ModelDims, config: MMAConfig, tokens: int, size: int, full_per_token: float,
                    plain: tuple[float, int], fused_swiglu: bool, checkpointing: bool, every_n_layers: int,
                    fused_attention: bool = False) -> float:
    """The most backward holds beyond the activations the forward left: backward runs the layers last to
    first, each freeing what it kept, so while layer j runs the layers above it hold nothing any more; layer
    j's working set is its gradients and what its recomputation brings back.

    plain: (bytes per token, bytes per layer) that a layer not checkpointed keeps."""
    d, layer_full = dims.hidden_size, tokens * full_per_token
    plain_kept, plain_constant = plain
    gradients = _layer_backward_bytes(dims, config, tokens, size, layer_full, fused_swiglu, fused_attention) + \
        2 * tokens * d * size
    plain_layer = (tokens * plain_kept + plain_constant,
                   gradients + _recomputed_bytes(dims, config, tokens, size, layer_full, plain_kept, False))
    checkpointed_layer = (tokens * d * size,
                          gradients + _recomputed_bytes(dims, config, tokens, size, layer_full, plain_kept, True))
    backward, freed_above = 0, 0
    for index in reversed(range(dims.num_hidden_layers)):
        kept, working = checkpointed_layer if checkpointing and index % every_n_layers == 0 else plain_layer
        backward = max(backward, working - freed_above)
        freed_above += kept
    return backward


def _recomputed_bytes(dims: ModelDims, config: MMAConfig, tokens: int, size: int, layer_full: float,
                      plain_kept: float, checkpointed: bool) -> float:
    """What comes back while one layer runs backward: a checkpointed layer's whole saved set less its input;
    a `recompute_attention` layer's unkept tensors and its recomputed forward's temporaries, the SwiGLU
    product [tokens, I], the FFN norm's output and o_proj's output [tokens, D] (an allowance, measured on
    CPU); nothing for a layer that keeps everything."""
    if checkpointed:
        return layer_full - tokens * dims.hidden_size * size
    if config.recompute_attention:
        return layer_full - tokens * plain_kept + tokens * (dims.intermediate_size + 2 * dims.hidden_size) * size
    return 0


def _layer_backward_bytes(dims: ModelDims, config: MMAConfig, tokens: int, size: int, layer_full: int,
                          fused_swiglu: bool, fused_attention: bool = False) -> int:
    """What one layer's backward holds besides the residual-stream gradients: gradients about as big as what
    the layer saved, less autograd's two SwiGLU temporaries [tokens, I] when the fused kernel runs, plus
    fastmma's CPU attention backward's float32 dk, dv accumulators (and float32 k, v below fp32); with
    recompute_mlp at least the recomputed gate and up with their gradients, [tokens, I] each (autograd's
    SwiGLU backward adds two more)."""
    swiglu_temporaries = 2 * tokens * dims.intermediate_size * size
    attention = tokens * dims.num_key_value_heads * dims.head_dim * 4 * (2 if size == 4 else 4) \
        if fused_attention else 0
    if config.recompute_mlp:
        return max(layer_full + attention, 2 * swiglu_temporaries + (0 if fused_swiglu else swiglu_temporaries))
    return layer_full - (swiglu_temporaries if fused_swiglu else 0) + attention


def memory_table(model_config, batches, seq_len: int, dtype=torch.bfloat16, config: MMAConfig | None = None,
                 gpu_gib: float = 24.0, every_n_layers: int = 1) -> list[dict]:
    """Rows for `fastmma memory`: each batch size without checkpointing, with every n-th layer checkpointed
    (when n > 1) and with every layer checkpointed (sizes in GiB)."""
    settings = [(False, 1)] + ([(True, every_n_layers)] if every_n_layers > 1 else []) + [(True, 1)]
    dims = model_dims(model_config)                   # a config.json is read once, not per row
    rows = []
    for batch in batches:
        for checkpointing, every in settings:
            estimate = estimate_memory(dims, batch, seq_len, dtype, checkpointing, config, every_n_layers=every)
            rows.append({"batch": batch, "seq_len": seq_len, "checkpointing": checkpointing,
                         "every_n_layers": every, "checkpointed_layers": estimate.checkpointed_layers,
                         "num_layers": dims.num_hidden_layers,
                         "peak_gib": estimate.peak_bytes / GIB, "weights_gib": estimate.weights_bytes / GIB,
                         "activations_gib": estimate.activation_bytes / GIB,
                         "saved_kb_per_token_per_layer": estimate.saved_per_token_per_layer_kept / 1000,
                         "fits": estimate.fits(gpu_gib * GIB)})
    return rows
