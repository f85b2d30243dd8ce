"""Memory savers: chunked LM head + loss, recomputing SwiGLU; exactness and what they keep."""
import copy

import pytest
import torch
import torch.nn.functional as F

import fastmma
from fastmma.memory import chunked_linear_cross_entropy, swiglu
from fastmma.memory.chunked_loss import default_chunk_tokens
from fastmma.memory.measure import peak_bytes_during

from .helpers import randomize_adapters, tiny_causal_lm


def saved_bytes(fn):
    """Bytes autograd keeps for backward while `fn` runs, each storage counted once."""
    storages = {}

    def pack(tensor):
        storages[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return out, sum(storages.values())


def test_chunked_loss_matches_full_logits():
    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(3, 11, 16, generator=generator, dtype=torch.float64, requires_grad=True)
    head = torch.randn(50, 16, generator=generator, dtype=torch.float64)
    labels = torch.randint(0, 50, (3, 11), generator=generator)
    labels[0, :4] = -100
    labels[1, :] = -100                          # a sample with no scored token
    labels[2, :8] = -100                         # answers only, as LaVIN scores them
    expected = F.cross_entropy((hidden @ head.t())[:, :-1].reshape(-1, 50), labels[:, 1:].reshape(-1),
                               ignore_index=-100)
    (expected_grad,) = torch.autograd.grad(expected, hidden)
    for chunk in (1, 5, 64):
        loss = chunked_linear_cross_entropy(hidden, head, labels, chunk_tokens=chunk)
        (grad,) = torch.autograd.grad(loss * 3.0, hidden)
        torch.testing.assert_close(loss, expected, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(grad, 3.0 * expected_grad, rtol=1e-10, atol=1e-12)


def test_chunked_loss_under_bf16_autocast_is_as_close_to_fp64_as_plain_autocast():
    generator = torch.Generator().manual_seed(1)
    hidden = torch.randn(2, 37, 24, generator=generator, dtype=torch.float64)
    head = torch.randn(301, 24, generator=generator, dtype=torch.float64) * 0.3
    labels = torch.randint(0, 301, (2, 37), generator=generator)
    labels[1, :9] = -100

    def full_logits_loss(h, w):
        return F.cross_entropy((h @ w.t()).float()[:, :-1].reshape(-1, 301), labels[:, 1:].reshape(-1))

    def loss_and_grad(loss_fn, dtype, autocast):
        h = hidden.to(dtype).requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            loss = loss_fn(h, head.to(dtype))
        (grad,) = torch.autograd.grad(loss, h)
        assert grad.dtype == dtype
        return loss.double(), grad.double()

    want_loss, want_grad = loss_and_grad(full_logits_loss, torch.float64, False)
    plain_loss, plain_grad = loss_and_grad(full_logits_loss, torch.float32, True)
    for chunk in (5, None):
        got_loss, got_grad = loss_and_grad(lambda h, w: chunked_linear_cross_entropy(h, w, labels, chunk_tokens=chunk),
                                           torch.float32, True)
        assert (got_loss - want_loss).abs() <= 2 * (plain_loss - want_loss).abs() + 1e-6
        assert (got_grad - want_grad).abs().max() <= 2 * (plain_grad - want_grad).abs().max() + 1e-6
        assert (plain_grad - want_grad).abs().max() > 1e-5             # bf16 GEMMs really ran


def test_chunked_loss_with_no_scored_token_is_zero():
    hidden = torch.randn(2, 5, 8, requires_grad=True)
    loss = chunked_linear_cross_entropy(hidden, torch.randn(20, 8), torch.full((2, 5), -100))
    loss.backward()
    assert loss.item() == 0.0 and hidden.grad.abs().max().item() == 0.0


def test_chunked_loss_keeps_an_eighth_of_the_logits():
    hidden = torch.randn(4, 64, 32, requires_grad=True)
    head = torch.randn(1000, 32)
    labels = torch.randint(0, 1000, (4, 64))
    _, kept = saved_bytes(lambda: chunked_linear_cross_entropy(hidden, head, labels))
    full_logits = 4 * 64 * 1000 * 4
    assert kept <= hidden.numel() * 4 + 1024 and kept <= full_logits / 8


def test_default_chunks_stay_under_an_eighth_of_the_logits_and_are_not_tiny():
    assert default_chunk_tokens(1024, torch.float32) == 96             # a tenth in 16-row blocks: fp32 logits
    assert default_chunk_tokens(520, torch.float32) == 48
    assert default_chunk_tokens(1024, torch.bfloat16) == 64            # a sixteenth: a bf16 copy exists briefly
    assert default_chunk_tokens(512, torch.bfloat16) == 32
    assert default_chunk_tokens(7, torch.float32) == 7                 # a small batch is one chunk, not 7 GEMVs
    assert default_chunk_tokens(100, torch.bfloat16) == 16
    assert default_chunk_tokens(10 ** 6, torch.float32) == 1024


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_chunked_loss_peak_stays_under_an_eighth_of_the_full_logits(dtype):
    tokens, vocab, dim = 1024, 4096, 16
    hidden = torch.randn(tokens, dim, dtype=dtype, requires_grad=True)
    head = torch.randn(vocab, dim, dtype=dtype)
    labels = torch.randint(0, vocab, (1, tokens))
    _, peak = peak_bytes_during(lambda: chunked_linear_cross_entropy(hidden[None], head, labels).backward())
    full_fp32_logits = tokens * vocab * 4
    assert full_fp32_logits / 16 < peak < full_fp32_logits / 8        # one chunk, in fp32 (and bf16), and small rest


def test_swiglu_matches_autograd_and_keeps_two_tensors():
    gate = torch.randn(5, 7, 24, dtype=torch.float64, requires_grad=True)
    up = torch.randn(5, 7, 24, dtype=torch.float64, requires_grad=True)
    grad_out = torch.randn(5, 7, 24, dtype=torch.float64)
    expected = F.silu(gate) * up
    expected_grads = torch.autograd.grad(expected, (gate, up), grad_out)
    out, kept = saved_bytes(lambda: swiglu(gate, up))
    grads = torch.autograd.grad(out, (gate, up), grad_out)
    torch.testing.assert_close(out, expected)
    for got, want in zip(grads, expected_grads):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    _, plain_kept = saved_bytes(lambda: F.silu(gate) * up)
    assert kept == 2 * gate.numel() * 8 < plain_kept
    with torch.no_grad():                                    # inference skips the autograd.Function
        assert torch.equal(swiglu(gate, up), out.detach())


@pytest.mark.parametrize("recompute_mlp", [False, True])
def test_ten_training_steps_match_the_plain_model(recompute_mlp):
    """Memory features on vs off: same losses and adapter gradients over 10 AdamW steps."""
    plain_config = fastmma.MMAConfig(targets=("attn", "ffn"), dropout=0.0, recompute_swiglu=False,
                                     chunked_loss=False)
    lean_config = fastmma.MMAConfig(targets=("attn", "ffn"), dropout=0.0, recompute_mlp=recompute_mlp)
    base = tiny_causal_lm("llama")
    models = [fastmma.patch(copy.deepcopy(base), c) for c in (plain_config, lean_config)]
    for model in models:
        randomize_adapters(model, std=0.05)
        model.train()
    optimizers = [torch.optim.AdamW(fastmma.adapter_parameters(m).values(), lr=1e-3) for m in models]
    ids = torch.randint(3, 97, (3, 12), generator=torch.Generator().manual_seed(4))
    labels = ids.clone()
    labels[:, :3] = -100
    for _ in range(10):
        losses, grads = [], []
        for model, optimizer in zip(models, optimizers):
            out = model(ids, labels=labels, modality=torch.tensor([0, 1, 1]))
            out.loss.backward()
            losses.append(out.loss.item())
            grads.append({n: p.grad.clone() for n, p in fastmma.adapter_parameters(model).items()})
            optimizer.step()
            optimizer.zero_grad()
        assert abs(losses[0] - losses[1]) <= 1e-5 * abs(losses[0])
        for name in grads[0]:
            torch.testing.assert_close(grads[1][name], grads[0][name], rtol=1e-4, atol=1e-7)
    assert models[1](ids, labels=labels).logits is None                  # never materialised in training
    with torch.no_grad():
        assert models[1](ids, labels=labels).logits.shape == (3, 12, 97)   # but returned when not training


def test_lean_rms_norm_matches_hugging_face_and_keeps_input_and_rstd():
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    from fastmma.memory import rms_norm

    norm = LlamaRMSNorm(24, eps=1e-6)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(24, generator=torch.Generator().manual_seed(1)))
    for dtype in (torch.float64, torch.float32, torch.bfloat16):
        hf = copy.deepcopy(norm).to(dtype)
        x = (torch.randn(3, 5, 24, dtype=torch.float64) * 3).to(dtype).requires_grad_()
        grad_out = torch.randn(3, 5, 24, dtype=torch.float64).to(dtype)
        expected = hf(x)
        expected_grads = torch.autograd.grad(expected, (x, hf.weight), grad_out)
        out, kept = saved_bytes(lambda: rms_norm(x, hf.weight, hf.variance_epsilon))
        grads = torch.autograd.grad(out, (x, hf.weight), grad_out)
        assert torch.equal(out, expected)                               # the same ops forward
        with torch.no_grad():                                           # inference skips the autograd.Function
            assert torch.equal(rms_norm(x, hf.weight, hf.variance_epsilon), expected.detach())
        tolerance = dict(rtol=2e-2, atol=2e-2) if dtype == torch.bfloat16 else dict(rtol=1e-5, atol=1e-5)
        for got, want in zip(grads, expected_grads):
            torch.testing.assert_close(got, want, **tolerance)
        size = torch.empty((), dtype=dtype).element_size()
        assert kept == x.numel() * size + 15 * 4 + 24 * size             # x, rstd [3, 5, 1] (fp32), weight
        if dtype == torch.bfloat16:                                     # with a frozen weight, as in fastmma:
            frozen = copy.deepcopy(hf).requires_grad_(False)
            _, hf_kept = saved_bytes(lambda: frozen(x))
            _, lean_kept = saved_bytes(lambda: rms_norm(x, frozen.weight, frozen.variance_epsilon))
            assert hf_kept - lean_kept == x.numel() * (4 - 2)            # HF keeps the fp32 upcast of x instead


def test_patch_swaps_the_plain_norms_and_the_mlp_and_unpatch_restores_them():
    base = tiny_causal_lm("llama")
    classes = {name: type(module) for name, module in base.named_modules()}
    model = fastmma.patch(copy.deepcopy(base))
    layer = model.model.layers[0]
    assert type(layer.mlp).forward is not classes["model.layers.0.mlp"].forward                  # recomputing SwiGLU
    assert type(layer.post_attention_layernorm).forward is not classes["model.layers.0.post_attention_layernorm"].forward
    assert type(model.model.norm).forward is not classes["model.norm"].forward
    assert type(layer.self_attn.k_proj).forward is not classes["model.layers.0.self_attn.k_proj"].forward  # cast cache
    fastmma.unpatch(model)
    assert {name: type(module) for name, module in model.named_modules()} == classes
    recomputing = fastmma.patch(copy.deepcopy(base), fastmma.MMAConfig(recompute_attention=True))
    assert type(recomputing.model.layers[0]).forward is not classes["model.layers.0"].forward
    assert type(recomputing.model.layers[0].self_attn.q_proj).forward is not classes["model.layers.0.self_attn.q_proj"].forward
    fastmma.unpatch(recomputing)
    assert {name: type(module) for name, module in recomputing.named_modules()} == classes
    off = fastmma.patch(copy.deepcopy(base), fastmma.MMAConfig(recompute_norm=False, recompute_swiglu=False,
                                                                cache_autocast_weights=False))
    assert type(off.model.norm) is classes["model.norm"] and type(off.model.layers[0].mlp) is classes["model.layers.0.mlp"]
    assert type(off.model.layers[0]) is classes["model.layers.0"]
    assert type(off.model.layers[0].self_attn.q_proj) is classes["model.layers.0.self_attn.q_proj"]
