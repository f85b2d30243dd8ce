"""The plain-PyTorch op against the LaVIN-layout oracle (fp64), forward and every gradient."""
import pytest
import torch

from fastmma import reference
from fastmma.ops.norm_adapter import torch_rms_norm_adapter, torch_rms_norm_adapter_by_expert

from .helpers import relative_error

# Max error relative to the largest magnitude, for a computation done in each precision.
RELATIVE_TOLERANCE = {torch.float32: 2e-5, torch.float16: 1e-2, torch.bfloat16: 6e-2}


def make_inputs(batch, length, hidden, rank, groups, experts, dtype, with_mask=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    rand = lambda *shape: torch.randn(*shape, generator=g)  # noqa: E731
    inputs = dict(
        x=rand(batch, length, hidden).to(dtype),
        norm_weight=(1 + 0.1 * rand(hidden)).to(dtype),
        down_weight=rand(rank, hidden) / hidden ** 0.5,
        down_bias=0.1 * rand(rank),
        up_weight=0.3 * rand(experts, hidden, rank // groups),
        up_bias=0.1 * rand(experts, hidden),
        router_weights=torch.softmax(rand(batch, experts), -1),
    )
    mask = None
    if with_mask:
        mask = ((torch.rand(batch, length, rank, generator=g) > 0.1).float() / 0.9).to(dtype)
    return inputs, mask


def run(fn, inputs, mask, dtype, scale=0.7, routing="router_weights"):
    leaves = {k: v.detach().clone().to(dtype if k in ("x", "norm_weight") else v.dtype).requires_grad_(True)
              for k, v in inputs.items() if k != "expert_ids"}
    args = [leaves["x"], leaves["norm_weight"], 1e-5, leaves["down_weight"], leaves["down_bias"],
            leaves["up_weight"], leaves["up_bias"]]
    if routing == "expert_ids":
        args.append(inputs["expert_ids"])
    else:
        args.append(leaves["router_weights"])
    out = fn(*args, scale, mask)
    grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(7)).to(out.dtype)
    out.backward(grad_out)
    return out.detach(), {k: v.grad for k, v in leaves.items() if v.grad is not None}


def to64(inputs):
    return {k: (v.double() if v.is_floating_point() else v) for k, v in inputs.items()}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape", [(2, 7, 24, 4, 2, 2), (3, 5, 30, 8, 1, 3)])
def test_torch_path_matches_lavin_layout(dtype, shape):
    inputs, mask = make_inputs(*shape, dtype=torch.float32)
    exact, exact_grads = run(reference.norm_adapter_reference, to64(inputs), None if mask is None else mask.double(),
                             torch.float64)
    fast, fast_grads = run(torch_rms_norm_adapter, inputs, None if mask is None else mask.to(dtype), dtype)
    assert fast.dtype == dtype
    assert relative_error(fast, exact) <= RELATIVE_TOLERANCE[dtype]
    assert set(fast_grads) == set(exact_grads) and len(exact_grads) == 7
    for name in exact_grads:
        assert relative_error(fast_grads[name], exact_grads[name]) <= RELATIVE_TOLERANCE[dtype], name


def test_expert_id_routing_matches_reference():
    inputs, mask = make_inputs(2, 9, 40, 8, 2, 2, dtype=torch.float64)
    inputs["expert_ids"] = torch.randint(0, 2, (2, 9))
    exact, exact_grads = run(reference.norm_adapter_by_expert_reference, inputs, mask, torch.float64,
                             routing="expert_ids")
    fast, fast_grads = run(torch_rms_norm_adapter_by_expert, inputs, mask, torch.float64, routing="expert_ids")
    torch.testing.assert_close(fast, exact, rtol=1e-10, atol=1e-10)
    for name in exact_grads:
        torch.testing.assert_close(fast_grads[name], exact_grads[name], rtol=1e-9, atol=1e-10)


def test_lavin_module_routes_by_token_zero():
    """The LaVIN-layout module equals the functional reference given router weights from token 0."""
    from fastmma.adapters import MMAAdapter
    from fastmma.config import MMAConfig

    adapter = MMAAdapter(32, MMAConfig(rank=8, groups=2, experts=2, dropout=0.0)).double()
    with torch.no_grad():
        for p in adapter.parameters():
            p.normal_(0, 0.3)
    normed = torch.randn(3, 6, 32, dtype=torch.float64)
    lavin = reference.LaVINAdapter.from_adapter(adapter, dtype=torch.float64).eval()
    weights = adapter.router_weights(normed[:, 0])
    expected = reference.mma_adapter_reference(normed, adapter.down.weight, adapter.down.bias, adapter.up_weight,
                                               adapter.up_bias, weights, adapter.scale)
    torch.testing.assert_close(lavin(normed), expected, rtol=1e-12, atol=1e-12)
    assert (lavin(normed) - normed).abs().max() > 1e-2   # the adapter does something
