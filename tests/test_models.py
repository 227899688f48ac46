"""Models: the registry interface, and every MoE dispatch path against a naive per-expert reference."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from moelab.models import build_model, get_model_spec, model_names
from moelab.models.moe import MoE, cv_squared


def reference(moe: MoE, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """sum_e weights[:, e] * expert_e(x), one expert at a time: the definition, not the fast path."""
    y = torch.zeros(x.shape[0], moe.w2.shape[2])
    for e in range(moe.num_experts):
        out = F.relu(x @ moe.w1[e] + moe.b1[e]) @ moe.w2[e] + moe.b2[e]
        y = y + weights[:, e : e + 1] * out
    return y


def grads(moe: MoE) -> list[torch.Tensor]:
    return [p.grad.clone() for p in (moe.w1, moe.b1, moe.w2, moe.b2)]


@pytest.mark.parametrize("k", [1, 2, 3])
def test_sparse_dispatch_equals_reference_with_gradients(k):
    torch.manual_seed(0)
    moe = MoE(d_in=12, d_hidden=16, d_out=5, num_experts=4, k=k).eval()
    x = torch.randn(50, 12)
    out = moe(x)
    out.y.square().sum().backward()
    fast = grads(moe)
    moe.zero_grad()
    logits = moe.router(x).float()
    top, index = logits.topk(k, dim=1)
    weights = torch.zeros_like(logits).scatter(1, index, top.softmax(dim=1))
    expected = reference(moe, x, weights)
    expected.square().sum().backward()
    assert torch.allclose(out.y, expected, atol=1e-5)
    assert torch.equal(out.expert_index, index)
    for a, b in zip(fast, grads(moe)):
        assert torch.allclose(a, b, atol=1e-5)


def test_soft_dispatch_equals_reference_with_gradients():
    torch.manual_seed(1)
    moe = MoE(d_in=12, d_hidden=16, d_out=5, num_experts=6, train_routing="soft", eval_routing="soft").eval()
    x = torch.randn(40, 12)
    out = moe(x)
    out.y.sum().backward()
    fast = grads(moe)
    moe.zero_grad()
    expected = reference(moe, x, moe.router(x).softmax(dim=1))
    expected.sum().backward()
    assert out.expert_index is None
    assert torch.allclose(out.y, expected, atol=1e-5)
    for a, b in zip(fast, grads(moe)):
        assert torch.allclose(a, b, atol=1e-5)


def test_an_expert_that_receives_no_tokens_is_fine():
    moe = MoE(d_in=4, d_hidden=8, d_out=3, num_experts=8, k=1).eval()
    with torch.no_grad():
        moe.router.weight.zero_()
        moe.router.bias.copy_(torch.arange(8.0))  # every token goes to expert 7
    out = moe(torch.randn(10, 4))
    assert (out.expert_index == 7).all() and out.y.shape == (10, 3)


def test_cv_squared_is_zero_when_balanced_and_positive_otherwise():
    assert cv_squared(torch.full((8,), 3.0)).item() == 0.0
    assert cv_squared(torch.tensor([1.0, 0.0, 0.0, 0.0])).item() == pytest.approx(3.0)


def test_noisy_topk_balance_loss_is_differentiable_through_gate_and_noise():
    torch.manual_seed(0)
    moe = MoE(d_in=8, d_hidden=8, d_out=2, num_experts=4, k=2, noisy_gating=True, balance_weight=1.0).train()
    out = moe(torch.randn(64, 8))
    out.aux_losses["balance"].backward()
    assert moe.router.weight.grad.abs().sum() > 0 and moe.noise.weight.grad.abs().sum() > 0


def test_moe_hard_trains_soft_and_infers_with_argmax_routing():
    torch.manual_seed(0)
    model = build_model("moe_hard", 10, 3, {"num_experts": 4, "hidden": 8, "dropout": 0.0, "k": 1})
    x = torch.randn(30, 10)
    model.train()
    assert model(x).expert_index is None  # training mixes all experts
    model.eval()
    out = model(x)
    assert torch.equal(out.expert_index[:, 0], out.gate_probs.argmax(dim=1))
    chosen = torch.nn.functional.one_hot(out.gate_probs.argmax(dim=1), 4).float()
    assert torch.allclose(out.y, reference(model.moe, x, chosen), atol=1e-5)
    with model.use_routing("soft"):
        assert torch.allclose(model(x).y, reference(model.moe, x, out.gate_probs), atol=1e-5)
    assert model.moe.eval_routing == "topk"  # restored after the block


@pytest.mark.parametrize("name", ["mlp", "moe", "moe_topk", "moe_hard"])
def test_every_registered_model_follows_the_interface(name):
    assert name in model_names()
    spec = get_model_spec(name)
    model = build_model(name, 64, 10, {})
    out = model.train()(torch.randn(16, 64))
    assert out.y.shape == (16, 10)
    assert all(v.ndim == 0 for v in out.aux_losses.values())
    if name != "mlp":
        assert out.gate_probs.shape[0] == 16 and torch.allclose(out.gate_probs.sum(1), torch.ones(16))
    assert set(spec.schema) == {f for f in spec.params.__dataclass_fields__}
