"""Inputs and helpers shared by the C++ and Triton kernel suites."""
import torch

import fastmma


def make_inputs(batch, length, hidden, rank, groups, experts, *, routing="per_sample", out_features=None,
                with_mask=True, seed=0):
    """fp32 master inputs; every tensor random and non-zero."""
    g = torch.Generator().manual_seed(seed)
    rand = lambda *shape: torch.randn(*shape, generator=g)  # noqa: E731
    inputs = dict(
        x=rand(batch, length, hidden),
        norm_weight=1 + 0.1 * rand(hidden),
        down_weight=rand(rank, hidden) / hidden ** 0.5,
        down_bias=0.1 * rand(rank),
        up_weight=0.3 * rand(experts, hidden, rank // groups),
        up_bias=0.1 * rand(experts, hidden),
    )
    if routing == "per_token":
        inputs["expert_ids"] = torch.randint(0, experts, (batch, length), generator=g)
    else:
        inputs["router_weights"] = torch.softmax(rand(batch, experts), -1)
    inputs["h_mask"] = ((torch.rand(batch, length, rank, generator=g) > 0.1).float() / 0.9) if with_mask else None
    if out_features is not None:
        inputs["proj_weight"] = rand(out_features, hidden) / hidden ** 0.5
        inputs["proj_bias"] = 0.1 * rand(out_features)
    return inputs


def logits_and_adapter_grads(model, ids, modality):
    """Training-mode forward (dropout on h, the same masks for a fixed seed) and backward of a fixed loss."""
    model.zero_grad(set_to_none=True)
    torch.manual_seed(123)
    logits = model(ids, modality=modality).logits                                 # [B, L, V]
    loss_weights = torch.randn(logits.shape, generator=torch.Generator().manual_seed(5)).to(logits.device)
    (logits * loss_weights).sum().backward()
    return logits.detach(), {name: p.grad.clone() for name, p in fastmma.adapter_parameters(model).items()}


def assert_backend_matches_reference(monkeypatch, model, ids, modality, fast_backend: str) -> None:
    """Logits and every adapter gradient of `fast_backend` against the reference backend."""
    from ..helpers import relative_error

    results = {}
    for backend_name in ("reference", fast_backend):
        monkeypatch.setenv("FASTMMA_BACKEND", backend_name)
        results[backend_name] = logits_and_adapter_grads(model, ids, modality)
    (ref_logits, ref_grads), (fast_logits, fast_grads) = results["reference"], results[fast_backend]
    assert relative_error(fast_logits, ref_logits) <= 1e-5
    assert set(fast_grads) == set(ref_grads)
    assert len(ref_grads) == 4 * 6 + 1                       # 4 adapters x (A, a, U, c, W_r, b_r) + MOD embedding
    for name, ref_grad in ref_grads.items():
        assert ref_grad.abs().max() > 0, name
        assert relative_error(fast_grads[name], ref_grad) <= 1e-4, name
