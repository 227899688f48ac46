"""Models: the registry interface, every MoE dispatch path against a naive per-expert reference,
the auxiliary losses at known points, and the gating options."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from moelab.models import build_model, get_model_spec, model_names
from moelab.schema import check_section
from moelab.models.base import count_parameters
from moelab.models.params import MLPParams
from moelab.models.moe import (MoE, cv_squared, kl_to_uniform, output_similarity, router_z_loss,
                               switch_balance)


def expert(moe: MoE, e: int, x: torch.Tensor, norm_stats=None) -> torch.Tensor:
    h = x @ moe.w1[e] + moe.b1[e]
    if norm_stats is not None:
        mean, var = norm_stats
        h = (h - mean) / torch.sqrt(var + moe.norm.eps) * moe.norm.weight[e] + moe.norm.bias[e]
    return F.relu(h) @ moe.w2[e] + moe.b2[e]


def reference(moe: MoE, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """sum_e weights[:, e] * expert_e(x), one expert at a time: the definition, not the fast path."""
    y = torch.zeros(x.shape[0], moe.w2.shape[2])
    for e in range(moe.num_experts):
        y = y + weights[:, e : e + 1] * expert(moe, e, x)
    return y


def grads(moe: MoE) -> list[torch.Tensor]:
    return [p.grad.clone() for p in (moe.w1, moe.b1, moe.w2, moe.b2, moe.router.weight)]


def topk_weights(moe: MoE, x: torch.Tensor, k: int) -> torch.Tensor:
    logits = moe.router(x).float()
    top, index = logits.topk(k, dim=1)
    return torch.zeros_like(logits).scatter(1, index, top.softmax(dim=1))


@pytest.mark.parametrize("dispatch", ["grouped_mm", "loop"])
@pytest.mark.parametrize("k", [1, 2, 3])
def test_sparse_dispatch_equals_reference_with_gradients(k, dispatch):
    torch.manual_seed(0)
    moe = MoE(d_in=12, d_hidden=16, d_out=8, num_experts=4, k=k, dispatch=dispatch).eval()  # 16-byte rows
    x = torch.randn(50, 12)
    out = moe(x)
    out.y.square().sum().backward()
    fast = grads(moe)
    moe.zero_grad()
    expected = reference(moe, x, topk_weights(moe, x, k))
    expected.square().sum().backward()
    assert torch.allclose(out.y, expected, atol=1e-5)
    assert torch.equal(out.expert_index, moe.router(x).topk(k, dim=1).indices)
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


def test_batch_norm_uses_the_statistics_of_each_experts_own_tokens():
    torch.manual_seed(2)
    moe = MoE(d_in=6, d_hidden=8, d_out=3, num_experts=3, k=1, batch_norm=True).train()
    x = torch.randn(60, 6)
    out = moe(x)
    chosen = out.expert_index[:, 0]
    for e in range(3):
        rows = chosen == e
        h = x[rows] @ moe.w1[e] + moe.b1[e]
        stats = (h.mean(0), h.var(0, unbiased=False))
        assert torch.allclose(out.y[rows], expert(moe, e, x[rows], stats), atol=1e-5)
    # inference uses the running statistics, which moved toward the batch statistics
    assert not torch.allclose(moe.norm.running_mean, torch.zeros_like(moe.norm.running_mean))


def test_capacity_drops_the_tokens_over_capacity_in_token_order():
    moe = MoE(d_in=4, d_hidden=8, d_out=3, num_experts=4, k=1, capacity_factor=1.0).eval()
    with torch.no_grad():
        moe.router.weight.zero_()
        moe.router.bias.copy_(torch.tensor([5.0, 0.0, 0.0, 0.0]))  # everything wants expert 0
    x = torch.randn(20, 4)
    out = moe(x)
    capacity = math.ceil(1.0 * 20 / 4)
    assert out.dropped_fraction.item() == pytest.approx(1 - capacity / 20)
    assert torch.allclose(out.y[:capacity], expert(moe, 0, x[:capacity]), atol=1e-5)
    assert torch.equal(out.y[capacity:], torch.zeros(20 - capacity, 3))  # dropped tokens contribute zero


def test_an_expert_that_receives_no_tokens_is_fine():
    moe = MoE(d_in=4, d_hidden=8, d_out=3, num_experts=8, k=1).eval()
    with torch.no_grad():
        moe.router.weight.zero_()
        moe.router.bias.copy_(torch.arange(8.0))  # every token goes to expert 7
    out = moe(torch.randn(10, 4))
    assert (out.expert_index == 7).all() and out.y.shape == (10, 3)


def test_switch_balance_is_one_for_a_perfectly_balanced_routing():
    gates = torch.full((8, 4), 0.25)
    chosen = torch.arange(8).remainder(4).unsqueeze(1)
    assert switch_balance(gates, chosen, 1).item() == pytest.approx(1.0)
    top2 = torch.stack([torch.arange(8) % 4, (torch.arange(8) + 1) % 4], dim=1)
    assert switch_balance(gates, top2, 2).item() == pytest.approx(1.0)
    collapsed = torch.zeros(8, 1, dtype=torch.long)
    assert switch_balance(torch.eye(4)[[0] * 8], collapsed, 1).item() == pytest.approx(4.0)


def test_the_other_auxiliary_losses_at_known_points():
    assert cv_squared(torch.full((8,), 3.0)).item() == 0.0
    assert cv_squared(torch.tensor([1.0, 0.0, 0.0, 0.0])).item() == pytest.approx(3.0)
    assert kl_to_uniform(torch.full((5, 4), 0.25)).item() == pytest.approx(0.0, abs=1e-6)
    assert kl_to_uniform(torch.eye(4)[[0] * 5]).item() == pytest.approx(math.log(4), rel=1e-4)
    assert router_z_loss(torch.zeros(3, 4)).item() == pytest.approx(math.log(4) ** 2)
    same = torch.randn(6, 1, 5).expand(6, 3, 5)
    assert output_similarity(same).item() == pytest.approx(1.0, abs=1e-5)
    opposite = torch.cat([same[:, :1], -same[:, :1]], dim=1)
    assert output_similarity(opposite).item() == pytest.approx(-1.0, abs=1e-5)


def test_every_auxiliary_loss_is_weighted_logged_and_differentiable():
    torch.manual_seed(0)
    weights = {"switch_balance": 0.5, "cv_balance": 1.0, "z_loss": 0.1, "diversity": 0.2, "kl_uniform": 0.3}
    for routing, k in (("topk", 2), ("soft", 1)):
        moe = MoE(8, 8, 4, 4, k=k, train_routing=routing, noisy_gating=routing == "topk", aux_weights=weights).train()
        out = moe(torch.randn(64, 8))
        assert set(out.aux_losses) == set(weights)
        sum(out.aux_losses.values()).backward()
        assert moe.router.weight.grad.abs().sum() > 0
        if routing == "topk":
            assert moe.noise.weight.grad.abs().sum() > 0  # Shazeer's load is differentiable through the noise


def test_temperature_anneals_on_a_cosine_from_start_to_end():
    moe = MoE(4, 4, 2, 2, temperature=(2.0, 0.5))
    assert moe.temperature == 2.0
    moe.set_progress(0.5)
    assert moe.temperature == pytest.approx(1.25)
    moe.set_progress(1.0)
    assert moe.temperature == pytest.approx(0.5)


def test_balanced_initialisation_starts_with_uniform_routing():
    moe = MoE(16, 8, 2, 8, balanced_init=True).eval()
    probs = moe(torch.randn(100, 16)).gate_probs
    assert torch.allclose(probs, torch.full_like(probs, 1 / 8), atol=1e-2)


def test_moe_hard_trains_soft_and_infers_with_argmax_routing():
    torch.manual_seed(0)
    model = build_model("moe_hard", 10, 3, {"num_experts": 4, "hidden": 8, "dropout": 0.0, "batch_norm": False})
    x = torch.randn(30, 10)
    model.train()
    assert model(x).expert_index is None  # training mixes all experts
    model.eval()
    out = model(x)
    assert torch.equal(out.expert_index[:, 0], out.gate_probs.argmax(dim=1))
    chosen = F.one_hot(out.gate_probs.argmax(dim=1), 4).float()
    assert torch.allclose(out.y, reference(model.moe, x, chosen), atol=1e-5)
    with model.use_routing("soft"):
        assert torch.allclose(model(x).y, reference(model.moe, x, out.gate_probs), atol=1e-5)
    assert model.moe.eval_routing == "topk"  # restored after the block
    assert model.active_parameters() < sum(p.numel() for p in model.parameters())


def test_guided_default_assignment_pairs_classes_with_experts():
    model = build_model("moe_guided", 16, 10, {"num_experts": 5})
    assert model.assigned_experts(torch.arange(10)).tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    custom = build_model("moe_guided", 16, 4, {"num_experts": 2, "expert_classes": [[3], [0, 1, 2]]})
    assert custom.assigned_experts(torch.arange(4)).tolist() == [1, 1, 1, 0]
    with pytest.raises(ValueError, match="without an expert"):
        build_model("moe_guided", 16, 4, {"num_experts": 2, "expert_classes": [[3], [0, 1]]})
    assert get_model_spec("moe_guided").check({**{"num_experts": 2, "expert_classes": [[0], [0]]}}) != []


def test_cnn_models_need_image_data():
    with pytest.raises(ValueError, match="needs image data"):
        build_model("cnn", 34, 3, {})
    model = build_model("moe_topk", 64, 10, {"backbone": "cnn", "backbone_width": 8}, (8, 8))
    assert model(torch.randn(4, 64)).y.shape == (4, 10)


@pytest.mark.parametrize("name", ["mlp", "cnn", "moe", "moe_topk", "moe_hard", "moe_switch", "moe_guided"])
def test_every_registered_model_follows_the_interface(name):
    assert name in model_names()
    spec = get_model_spec(name)
    model = build_model(name, 64, 10, {}, (8, 8))
    x, y = torch.randn(16, 64), torch.randint(0, 10, (16,))
    out = model.train()(x, y)
    assert out.y.shape == (16, 10)
    assert all(v.ndim == 0 for v in out.aux_losses.values())
    if name.startswith("moe"):
        assert out.gate_probs.shape == (16, 4) and torch.allclose(out.gate_probs.sum(1), torch.ones(16))
        assert model.eval().expert_outputs(x).shape == (16, 4, 10)
    flops = model.eval().flops_per_sample(64)
    if name == "mlp":  # two hidden layers of 256 by default: the multiply-adds counted by hand
        assert flops == 2 * (64 * 256 + 256 * 256 + 256 * 10)
    else:
        assert flops > 2 * 64 * 10  # more than a linear classifier
    # the experiment file is checked against the model's parameters: an unknown one is named
    _, issues = check_section(spec.schema, {"hiden": 32}, f"variants.{name}")
    assert [i.path for i in issues] == [f"variants.{name}.hiden"]


COUNTED = {
    "mlp": [{}, {"hidden": 7, "layers": 1}, {"hidden": 33, "layers": 4}],
    "moe": [{}, {"num_experts": 3, "hidden": 5, "batch_norm": False}],
    "moe_topk": [{}, {"num_experts": 6, "k": 3, "hidden": 9}, {"noisy_gating": False, "batch_norm": False}],
    "moe_hard": [{}, {"num_experts": 5, "k": 2}],
    "moe_switch": [{"num_experts": 3, "hidden": 12}],
    "moe_guided": [{"num_experts": 2}],
}


@pytest.mark.parametrize("name", sorted(COUNTED))
@pytest.mark.parametrize("d_in,d_out", [(64, 10), (34, 3)])
def test_parameter_counts_without_torch_equal_the_built_models(name, d_in, d_out):
    spec = get_model_spec(name)
    for params in COUNTED[name]:
        counts = spec.parameter_counts(d_in, d_out, params)
        model = build_model(name, d_in, d_out, params).eval()
        assert counts.total == count_parameters(model), params
        assert counts.active == model.active_parameters(), params


@pytest.mark.parametrize("layers", [1, 2, 3])
@pytest.mark.parametrize("target", [700, 5_000, 123_457])
def test_the_matched_mlp_width_gives_the_nearest_parameter_count(layers, target):
    size = lambda hidden: MLPParams(hidden=hidden, layers=layers).parameter_counts(64, 10).total
    hidden = MLPParams.hidden_for(target, 64, 10, layers)
    assert abs(size(hidden) - target) <= abs(size(hidden + 1) - target)
    assert hidden == 1 or abs(size(hidden) - target) <= abs(size(hidden - 1) - target)
    assert MLPParams.hidden_for(10, 64, 10, layers) == 1  # below the narrowest MLP: width 1


def weight_signature(model) -> dict:
    """Names and shapes of the state, and the values of its integer buffers (e.g. the class -> expert map)."""
    return {k: (tuple(v.shape), None if v.is_floating_point() else v.tolist()) for k, v in model.state_dict().items()}


def changed(value, field):
    if field.name == "expert_classes":
        return [[0, 1, 2], [3, 4, 5], [6, 7], [8, 9]]
    if isinstance(value, bool):
        return not value
    if field.metadata.get("choices"):
        return next(c for c in field.metadata["choices"] if c != value)
    return value + 1 if isinstance(value, int) else value + 0.1


@pytest.mark.parametrize("name,base", [(name, {}) for name in ["mlp", "cnn", "moe", "moe_topk", "moe_hard", "moe_switch",
                                                              "moe_guided"]] + [("moe_topk", {"backbone": "cnn"})])
def test_the_architecture_is_exactly_what_changes_the_weights(name, base):
    """Every parameter, changed alone: the weights change shape (or fixed values) iff it is part of the
    architecture that init_from compares."""
    spec = get_model_spec(name)
    reference = weight_signature(build_model(name, 64, 10, base, (8, 8)))
    for field in dataclasses.fields(spec.params):
        params = {**base, field.name: changed(getattr(spec.params(**base), field.name), field)}
        differs = weight_signature(build_model(name, 64, 10, params, (8, 8))) != reference
        assert differs == (spec.architecture(params) != spec.architecture(base)), field.name
