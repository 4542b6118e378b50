"""The MoE adapter: batched dispatch equals the dense and looped references; load statistics are right."""

import pytest
import torch

from modeling.adapter import LinearAdapter, MoEAdapter, stack_frames


def _adapter(**kw) -> MoEAdapter:
    torch.manual_seed(0)
    args = dict(in_dim=32, out_dim=16, n_experts=8, top_k=2, n_shared=1, expert_hidden=24)
    args.update(kw)
    return MoEAdapter(**args).double()


def _batch(b=3, s=11, d=32):
    torch.manual_seed(1)
    x = torch.randn(b, s, d, dtype=torch.float64)
    mask = torch.arange(s)[None, :] < torch.tensor([11, 7, 3])[:, None]
    return x, mask


@pytest.mark.parametrize("n_shared,top_k", [(1, 2), (0, 1), (2, 3)])
def test_batched_dispatch_matches_dense_and_loop_outputs_and_gradients(n_shared, top_k):
    adapter = _adapter(n_shared=n_shared, top_k=top_k)
    x, mask = _batch()
    results = {}
    for dispatch in ("batched", "dense", "loop"):
        adapter.zero_grad()
        xi = x.clone().requires_grad_(True)
        out, aux = adapter(xi, mask, dispatch=dispatch)
        (out.pow(2).sum() + aux.loss).backward()
        grads = {n: p.grad.clone() for n, p in adapter.named_parameters()}
        results[dispatch] = (out.detach(), xi.grad.clone(), grads, aux.expert_counts)
    ref_out, ref_xgrad, ref_grads, ref_counts = results["dense"]
    for dispatch in ("batched", "loop"):
        out, xgrad, grads, counts = results[dispatch]
        torch.testing.assert_close(out, ref_out, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(xgrad, ref_xgrad, rtol=1e-10, atol=1e-10)
        for name, g in ref_grads.items():
            torch.testing.assert_close(grads[name], g, rtol=1e-9, atol=1e-10, msg=f"{dispatch}: grad of {name}")
        assert torch.equal(counts, ref_counts)


def test_padded_tokens_are_neither_routed_nor_output():
    adapter = _adapter()
    x, mask = _batch()
    out, aux = adapter(x, mask)
    assert out.shape == (3, 11, 16)
    assert torch.all(out[~mask] == 0)
    assert int(aux.expert_counts.sum()) == int(mask.sum()) * adapter.top_k
    # changing padded inputs changes nothing
    x2 = x.clone()
    x2[~mask] = 1e3
    out2, aux2 = adapter(x2, mask)
    torch.testing.assert_close(out2, out)
    torch.testing.assert_close(aux2.load_balance, aux.load_balance)


def test_load_balance_loss_is_one_for_uniform_router_and_matches_formula():
    adapter = _adapter()
    x, mask = _batch()
    with torch.no_grad():
        adapter.router.weight.zero_()  # uniform probabilities: P_e = 1/E, and sum f_e = 1
    _, aux = adapter(x, mask)
    assert aux.load_balance.item() == pytest.approx(1.0, abs=1e-12)

    adapter = _adapter()
    _, aux = adapter(x, mask)
    tokens = x[mask]
    probs = (tokens @ adapter.router.weight.T).softmax(-1)
    top = probs.topk(2, dim=-1).indices
    frac = torch.stack([(top == e).sum() for e in range(8)]).double() / top.numel()
    expected = 8 * (probs.mean(0) * frac).sum()
    assert aux.load_balance.item() == pytest.approx(expected.item(), rel=1e-12)
    assert aux.loss.item() == pytest.approx(0.01 * expected.item(), rel=1e-12)


def test_router_z_loss_enters_the_aux_loss_only_when_weighted():
    x, mask = _batch()
    plain = _adapter(router_z_loss_coef=0.0)
    weighted = _adapter(router_z_loss_coef=0.5)
    _, a = plain(x, mask)
    _, b = weighted(x, mask)
    assert a.z_loss.item() > 0
    assert b.loss.item() == pytest.approx(a.loss.item() + 0.5 * a.z_loss.item(), rel=1e-12)


def test_unknown_dispatch_is_refused():
    adapter = _adapter()
    x, mask = _batch()
    with pytest.raises(ValueError, match="dispatch"):
        adapter(x, mask, dispatch="sparse")


def test_stack_frames_groups_four_frames_and_rounds_lengths_up():
    x = torch.arange(2 * 10 * 3, dtype=torch.float32).reshape(2, 10, 3)
    lengths = torch.tensor([10, 5])
    x[1, 5:] = 0
    stacked, token_lengths = stack_frames(x, lengths, 4)
    assert stacked.shape == (2, 3, 12)
    assert token_lengths.tolist() == [3, 2]
    assert torch.equal(stacked[0, 1], x[0, 4:8].reshape(-1))
    assert torch.all(stacked[0, 2, 6:] == 0)  # partial last group is zero-filled


def test_linear_adapter_maps_to_llm_width_without_aux_loss():
    adapter = LinearAdapter(32, 16)
    x, mask = _batch()
    out, aux = adapter(x.float(), mask)
    assert out.shape == (3, 11, 16)
    assert aux.loss.item() == 0.0 and aux.expert_counts is None
