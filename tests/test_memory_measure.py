"""fastmma.memory.measure: saved-for-backward bytes per decoder layer, checked against hand counts."""
import copy

import pytest
import torch
from torch import nn

import fastmma
from fastmma.patching import cpu_attention
from fastmma.checkpointing import enable_checkpointing
from fastmma.memory.measure import measure_saved_bytes, peak_bytes_during
from fastmma.ops import backend

from .helpers import tiny_causal_lm

B, L, D = 2, 8, 16
N = B * L
F32 = 4


class SavesTwo(nn.Module):
    """Keeps tanh(x) and sigmoid(...) [B, L, D] for backward; `scale` (a parameter) is saved too but excluded."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.full((D,), 0.5))

    def forward(self, x):
        a = torch.tanh(x)                 # saves its output a
        b = a * self.scale                # saves a (again) and scale (a parameter)
        waste = torch.exp(x)              # saves its output, but the node dies with `waste`: not kept
        del waste
        return torch.sigmoid(b)           # saves its output


class SquaresInput(nn.Module):
    """x * x keeps x: here x is the previous layer's sigmoid output, which that layer already saved."""

    def forward(self, x):
        return x * x


class SavesSliceOfBuffer(nn.Module):
    """Saves a [B, L, D] view of a [B, L, 4D] buffer: 4x the view's bytes stay alive."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(D))

    def forward(self, x):
        big = x.repeat(1, 1, 4)           # [B, L, 4D], saved by nobody else
        return big[..., :D] * self.scale  # saves the view (for scale's gradient)


class Stack(nn.Module):
    def __init__(self, layers):
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.head = nn.Parameter(torch.ones(D))

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return (x * self.head).sum()      # saves x (outside any layer) and head (a parameter)


def test_hand_counted_stack():
    model = Stack([SavesTwo(), SquaresInput(), SavesSliceOfBuffer()])
    x = torch.randn(B, L, D)
    result = measure_saved_bytes(model, lambda: model(x), layers=model.layers, vocab_size=None)
    assert result.tokens == N
    assert [layer.storage_bytes for layer in result.layers] == [2 * N * D * F32, 0, 4 * N * D * F32]
    assert [layer.tensor_bytes for layer in result.layers] == [2 * N * D * F32, 0, N * D * F32]
    assert result.outside.storage_bytes == N * D * F32
    assert result.other_layer_calls.storage_bytes == 0
    assert result.per_token_per_layer() == 2 * D * F32            # median of [2ND4, 0, 4ND4] / N


def test_other_calls_of_a_layer_are_reported_apart():
    model = Stack([SavesTwo(), SavesTwo()])

    def run():
        small = model(torch.randn(1, 1, D))       # a small call first (like fastmma's modality pass) ...
        model(torch.randn(1, 2, D))               # ... and one whose graph is dropped: it keeps nothing
        return model(torch.randn(B, L, D)) + small

    result = measure_saved_bytes(model, run, layers=model.layers)
    assert [layer.storage_bytes for layer in result.layers] == [2 * N * D * F32] * 2
    assert result.other_layer_calls.storage_bytes == 2 * (2 * D * F32)
    assert result.tokens == N


def test_excluded_tensors_and_missing_layers():
    model = Stack([SquaresInput(), SquaresInput()])
    x = torch.randn(B, L, D, requires_grad=True)
    result = measure_saved_bytes(model, lambda: model(x), layers=model.layers, exclude=[x])
    assert [layer.storage_bytes for layer in result.layers] == [0, N * D * F32]   # layer 0 saved only x itself
    with pytest.raises(RuntimeError, match="never ran"):
        measure_saved_bytes(model, lambda: model.layers[0](x).sum(), layers=model.layers)


def _hf_floor_layer_bytes(config, tokens, size):
    """What a Hugging Face LLaMA layer keeps in fp32 with SDPA and no padding mask (autograd's own choices):
    norm inputs + rstd (x2), q, k, v (k/v with their own KV heads), the attention output and its logsumexp,
    gate, silu(gate) and up."""
    head_dim = config.hidden_size // config.num_attention_heads
    d, inter = config.hidden_size, config.intermediate_size
    q = config.num_attention_heads * head_dim
    kv = config.num_key_value_heads * head_dim
    per_token = size * (2 * d + 2 * q + 2 * kv + 3 * inter) + 4 * (2 + config.num_attention_heads)
    return per_token * tokens


def test_hugging_face_layer_matches_the_hand_count():
    model = tiny_causal_lm("llama").train()
    model.requires_grad_(False)
    ids = torch.randint(3, 97, (B, L), generator=torch.Generator().manual_seed(0))
    embeds = model.get_input_embeddings()(ids).detach().requires_grad_()
    result = measure_saved_bytes(model, lambda: model(inputs_embeds=embeds, labels=ids).loss)
    assert len(result.layers) == model.config.num_hidden_layers
    # every layer the same: the rotary tables that layer 0 saves first are filed outside
    assert [layer.storage_bytes for layer in result.layers] == [_hf_floor_layer_bytes(model.config, N, F32)] * 2
    head_dim = model.config.hidden_size // model.config.num_attention_heads
    assert result.outside.storage_bytes >= 2 * L * head_dim * F32
    # the loss keeps log_softmax of the [tokens, vocab] logits
    assert result.vocab_sized.storage_bytes >= N * model.config.vocab_size * F32


def test_fastmma_keeps_less_than_hugging_face_and_no_logits():
    base = tiny_causal_lm("llama", num_hidden_layers=3).train()
    base.requires_grad_(False)
    ids = torch.randint(3, 97, (B, L), generator=torch.Generator().manual_seed(0))
    embeds = base.get_input_embeddings()(ids).detach().requires_grad_()
    floor = measure_saved_bytes(base, lambda: base(inputs_embeds=embeds, labels=ids).loss, exclude=[embeds])
    config = fastmma.MMAConfig(dropout=0.0, recompute_attention=False)      # what each op saves, nothing recomputed
    patched = fastmma.patch(copy.deepcopy(base), config).train()
    lean = measure_saved_bytes(patched, lambda: patched(ids, labels=ids, modality=0).loss)
    inter, hidden = base.config.intermediate_size, base.config.hidden_size
    assert lean.layers[1].storage_bytes < floor.layers[1].storage_bytes
    if backend.resolve("rms_norm_adapter", "cpu")[0] == "cpp":
        # SwiGLU keeps gate and up, not silu(gate): one [tokens, intermediate] fp32 less per layer. The fused
        # norm + adapter keeps x and rstd like the norm did, plus h [tokens, r], the row -> table index (int64),
        # and per layer: the router weights [B, E] (mixing the up-projections, which are parameters) and the
        # per-sample table [B, r/G, D], all fp32.
        rank, experts, per_group = 8, 2, 8 // 2
        adapter_rows = N * rank * F32 + N * 8
        adapter_tables = (B * experts + B * per_group * hidden) * F32
        # fastmma's CPU attention keeps no attention output [tokens, H * hd] (SDPA's does)
        attention_output = N * hidden * F32 if patched.config._attn_implementation == cpu_attention.NAME else 0
        expected = floor.layers[1].storage_bytes - N * inter * F32 - attention_output + adapter_rows + adapter_tables
        assert lean.layers[1].storage_bytes == expected
    assert lean.vocab_sized.storage_bytes == 0                     # chunked loss: no logits kept
    # the modality pass runs the layers' parts on one token per modality (fastmma.patching.single_token), not
    # the layers' own forward: what it keeps is filed outside the per-layer figures
    assert lean.other_layer_calls.storage_bytes == 0
    assert lean.outside.storage_bytes > floor.outside.storage_bytes


@pytest.mark.parametrize("attention", ["auto", "sdpa"])
def test_recomputing_layers_keep_their_input_v_o_gate_up_and_the_attention_logsumexp(attention):
    config = fastmma.MMAConfig(recompute_attention=True, attn_implementation=attention)
    patched = fastmma.patch(tiny_causal_lm("llama", num_hidden_layers=3), config).train()
    ids = torch.randint(3, 97, (B, L), generator=torch.Generator().manual_seed(0))
    result = measure_saved_bytes(patched, lambda: patched(ids, labels=ids, modality=0).loss)
    config = patched.config
    head_dim = config.hidden_size // config.num_attention_heads
    per_token = (2 * config.hidden_size + config.num_key_value_heads * head_dim + 2 * config.intermediate_size)
    fused_attention = config._attn_implementation == cpu_attention.NAME       # + its logsumexp [B, H, L]
    logsumexp = N * config.num_attention_heads * F32 if fused_attention else 0
    assert [layer.storage_bytes for layer in result.layers[1:]] == [N * per_token * F32 + logsumexp] * 2
    # x, v, o_proj's output, gate, up (and the logsumexp)
    assert all(layer.storages == 5 + fused_attention for layer in result.layers[1:])


def test_checkpointed_layers_keep_only_their_input():
    patched = fastmma.patch(tiny_causal_lm("llama"), fastmma.MMAConfig(dropout=0.0)).train()
    enable_checkpointing(patched)
    ids = torch.randint(3, 97, (B, L), generator=torch.Generator().manual_seed(0))
    result = measure_saved_bytes(patched, lambda: patched(ids, labels=ids, modality=0).loss)
    hidden = patched.config.hidden_size
    assert result.layers[1].storage_bytes == N * hidden * F32


def test_peak_bytes_during_sees_a_transient_buffer():
    def fn():
        buffer = torch.ones(1000, 1000)       # 4 MB, freed before returning
        return float(buffer.sum())

    _, peak = peak_bytes_during(fn)
    assert 4_000_000 <= peak < 4_100_000
