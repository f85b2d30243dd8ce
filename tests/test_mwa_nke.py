"""The gather-by-modality NKE op against the literal per-way reference: forward and every gradient."""
import pytest
import torch

from fastmma.mwa.adapters import MultiwayNKE, modality_ids_for_split
from fastmma.mwa.nke_op import multiway_nke
from fastmma.mwa.reference import LANGUAGE_WAY, VISION_WAY, nke_reference, nke_way_reference

from .helpers import assert_close_to_reference

DTYPES = (torch.float32, torch.float16, torch.bfloat16)
SPLITS = (-1, 0, 1, 6, 11)          # all vision, all text, CLS only, a middle split, all but one token


def random_ways(hidden_size, rank, seed=0):
    generator = torch.Generator().manual_seed(seed)
    shapes = ((2, rank, hidden_size), (2, rank), (2, hidden_size, rank), (2, hidden_size))
    return [(torch.randn(shape, generator=generator) * 0.3).requires_grad_() for shape in shapes]


def run_both(split, dtype, with_mask, batch=3, length=12, hidden_size=37, rank=5):
    """(fast, plain, exact): outputs and gradients of the op in `dtype`, the reference in `dtype`, and in fp64."""
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(batch, length, hidden_size, generator=generator)
    mask = (torch.rand(batch, length, rank, generator=generator) > 0.3).float() / 0.7 if with_mask else None
    upstream = torch.randn(batch, length, hidden_size, generator=generator)
    ways = random_ways(hidden_size, rank)
    ids = modality_ids_for_split(split, batch, length, x.device)

    def grads(fn, cast):
        inputs = [x.to(cast).clone().requires_grad_()] + [w.detach().to(cast).requires_grad_() for w in ways]
        out = fn(inputs, None if mask is None else mask.to(cast))
        out.backward(upstream.to(cast))
        return [out.detach()] + [t.grad for t in inputs]

    fast = grads(lambda t, m: multiway_nke(t[0], ids, *t[1:], 0.7, m), dtype)
    plain = grads(lambda t, m: nke_reference(t[0], split, *t[1:], 0.7, m), dtype)
    exact = grads(lambda t, m: nke_reference(t[0], split, *t[1:], 0.7, m), torch.float64)
    return fast, plain, exact


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("split", SPLITS)
@pytest.mark.parametrize("with_mask", (False, True))
def test_forward_and_gradients_match_reference(split, dtype, with_mask):
    fast, plain, exact = run_both(split, dtype, with_mask)
    names = ("output", "d_x", "d_down_weight", "d_down_bias", "d_up_weight", "d_up_bias")
    for name, fast_value, plain_value, exact_value in zip(names, fast, plain, exact):
        assert fast_value.dtype == dtype, name
        assert_close_to_reference(fast_value, plain_value, exact_value, floor=1e-6 if dtype == torch.float32 else 1e-2,
                                  what=f"{name} split={split} {dtype}")


def test_unused_way_gets_exactly_zero_gradient():
    for split, unused in ((-1, LANGUAGE_WAY), (0, VISION_WAY)):
        fast, _, _ = run_both(split, torch.float32, with_mask=False)
        for grad in fast[2:]:
            assert torch.count_nonzero(grad[unused]) == 0
            assert torch.count_nonzero(grad[1 - unused]) > 0


@pytest.mark.parametrize("loss_on, silent_way", [("text", VISION_WAY), ("vision", LANGUAGE_WAY)])
def test_joint_sequence_each_way_learns_only_from_its_own_tokens(loss_on, silent_way):
    nke = MultiwayNKE(hidden_size=24, rank=4, scale=0.1, dropout=0.2).train()
    with torch.no_grad():
        nke.up_weight.normal_()
    nke.split_position = 7
    branch = nke(torch.randn(3, 10, 24))                                            # [B, 7 vision + 3 text, D]
    selected = branch[:, 7:] if loss_on == "text" else branch[:, :7]
    selected.pow(2).sum().backward()
    for name, param in nke.named_parameters():
        assert torch.count_nonzero(param.grad[silent_way]) == 0, name
        assert torch.count_nonzero(param.grad[1 - silent_way]) > 0, name


def test_interleaved_modalities_route_each_token_to_its_way():
    """Arbitrary per-token ids (not one split): each token must equal its own way's branch."""
    generator = torch.Generator().manual_seed(2)
    x = torch.randn(2, 9, 16, generator=generator)
    ids = torch.randint(0, 2, (2, 9), generator=generator)
    ways = [w.detach() for w in random_ways(16, 4)]
    branch = multiway_nke(x, ids, *ways, 0.5)
    per_way = [nke_way_reference(x, *(w[way] for w in ways), 0.5) for way in (VISION_WAY, LANGUAGE_WAY)]
    expected = torch.where(ids[..., None] == LANGUAGE_WAY, per_way[LANGUAGE_WAY], per_way[VISION_WAY])
    torch.testing.assert_close(branch, expected)


def test_split_outside_the_sequence_is_rejected():
    with pytest.raises(ValueError, match="split position 13"):
        modality_ids_for_split(13, 1, 12, "cpu")
