"""The C++ in-place softmax cross-entropy (fastmma._C.cross_entropy_grad_) against fp64 PyTorch: the
summed loss and the gradient it writes over vocab-major [V, C] logits, on odd shapes, in fp32/bf16/fp16.
The kernel's error against fp64 must stay within 2x what plain PyTorch makes in the same dtype (logits
upcast to fp32, as Hugging Face's loss does, the gradient cast back) plus a floor of a few ulps.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fastmma.ops import cpp_backend, cpp_cross_entropy

pytestmark = pytest.mark.skipif(not cpp_backend.is_available(),
                                reason="fastmma's C++ extension is not built (pip install --no-build-isolation -e .)")

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
SHAPES = [(1001, 37), (5, 1), (3000, 300), (64, 16), (17, 258)]   # pack tails, one column, two column spans


def _case(shape, seed, spread=4.0):
    generator = torch.Generator().manual_seed(seed)
    vocab, columns = shape
    logits = torch.randn(shape, dtype=torch.float64, generator=generator) * spread        # [V, C]
    targets = torch.randint(0, vocab, (columns,), generator=generator)                     # [C]
    return logits, targets


def _reference(logits, targets, scale):
    """(summed loss, scale * d loss_sum / d logits) of logits [V, C] computed by PyTorch in logits' dtype."""
    columns = torch.arange(targets.shape[0])
    log_probs = torch.log_softmax(logits, dim=0)
    grad = torch.softmax(logits, dim=0)
    grad[targets, columns] -= 1.0
    return -log_probs[targets, columns].sum().item(), grad * scale


@pytest.mark.parametrize("dtype_name", list(DTYPES))
@pytest.mark.parametrize("shape", SHAPES)
def test_loss_and_gradient_match_fp64(shape, dtype_name):
    dtype, scale = DTYPES[dtype_name], 1 / 7
    logits64, targets = _case(shape, seed=shape[0] + shape[1])
    logits = logits64.to(dtype)
    want_loss, want_grad = _reference(logits.double(), targets, scale)
    plain_loss, plain_grad = _reference(logits.float(), targets, scale)
    plain_grad = plain_grad.to(dtype)
    buffer = logits.clone()
    loss = cpp_cross_entropy.cross_entropy_grad_(buffer, targets, scale)
    assert buffer.dtype == dtype
    assert abs(loss - want_loss) <= 2 * abs(plain_loss - want_loss) + 1e-9 * shape[1]
    grad_error = (buffer.double() - want_grad).abs().max().item()
    plain_error = (plain_grad.double() - want_grad).abs().max().item()
    assert grad_error <= 2 * plain_error + 4 * torch.finfo(dtype).eps * scale      # + a few ulps of the gradient


def test_large_logits_and_one_dominant_class_stay_finite():
    logits, targets = _case((500, 20), seed=3)
    logits[targets[:10], torch.arange(10)] += 1e4                   # softmax ~ onehot: gradient ~ 0 at the target
    logits[7, 10:] = -1e4                                           # e^(x - max) underflows to exactly 0
    buffer = logits.float().clone()
    loss = cpp_cross_entropy.cross_entropy_grad_(buffer, targets, 1.0)
    want_loss, want_grad = _reference(logits, targets, 1.0)
    assert abs(loss - want_loss) <= 1e-3 and torch.isfinite(buffer).all()
    torch.testing.assert_close(buffer.double(), want_grad, atol=1e-6, rtol=0)
    assert (buffer[7, 10:] == 0).all()


def test_nan_logits_give_nan_as_pytorch():
    logits, targets = _case((50, 4), seed=4)
    logits[3, 1] = float("nan")
    buffer = logits.float().clone()
    loss = cpp_cross_entropy.cross_entropy_grad_(buffer, targets, 1.0)
    assert loss != loss                                             # NaN, like F.cross_entropy
    assert torch.isnan(buffer[:, 1]).all() and torch.isfinite(buffer[:, [0, 2, 3]]).all()
    assert torch.isnan(F.cross_entropy(logits.t()[1:2], targets[1:2]))


def test_results_do_not_depend_on_the_thread_count():
    logits, targets = _case((2000, 96), seed=5)
    results = []
    threads = torch.get_num_threads()
    try:
        for count in (1, 2):
            torch.set_num_threads(count)
            buffer = logits.float().clone()
            results.append((cpp_cross_entropy.cross_entropy_grad_(buffer, targets, 0.5), buffer))
    finally:
        torch.set_num_threads(threads)
    assert results[0][0] == results[1][0] and torch.equal(results[0][1], results[1][1])


@pytest.mark.parametrize("problem", ["target out of range", "negative target", "int32 targets", "targets too short",
                                     "float64 logits", "not contiguous", "1-D logits"])
def test_bad_inputs_are_named(problem):
    logits, targets = _case((40, 6), seed=6)
    logits = logits.float()
    match = {"target out of range": r"targets must be in \[0, 40\)", "negative target": r"targets must be in",
             "int32 targets": "targets must be int64", "targets too short": "targets must be int64 of shape",
             "float64 logits": "expected float32, bfloat16 or float16", "not contiguous": "contiguous",
             "1-D logits": "contiguous"}[problem]
    if problem == "target out of range":
        targets[2] = 40
    elif problem == "negative target":
        targets[0] = -100
    elif problem == "int32 targets":
        targets = targets.int()
    elif problem == "targets too short":
        targets = targets[:5]
    elif problem == "float64 logits":
        logits = logits.double()
    elif problem == "not contiguous":
        logits = torch.randn(6, 40).t()
    else:
        logits = logits.reshape(-1)
    with pytest.raises(RuntimeError, match=match):
        cpp_cross_entropy.cross_entropy_grad_(logits, targets, 1.0)
