"""The routers of moe_routed: each one's defining invariant, its parameter count, and its refusals."""

from __future__ import annotations

import math

import pytest
import torch

from moelab.data import DataSettings, load_dataset
from moelab.launch.cli import main
from moelab.models import build_model, get_model_spec
from moelab.models.base import count_parameters
from moelab.models.moe import MoE, switch_balance
from moelab.train.settings import TrainSettings
from moelab.train.trainer import train_one_epoch


def layer(**options) -> MoE:
    torch.manual_seed(0)
    return MoE(16, 8, 3, num_experts=4, batch_norm=False, **options)


def test_expert_choice_gives_every_expert_exactly_its_capacity():
    x = torch.randn(50, 16)
    for capacity_factor, k in ((None, 1), (1.5, 1), (1.0, 2)):
        out = layer(router="expert_choice", k=k, capacity_factor=capacity_factor)(x)
        capacity = math.ceil((capacity_factor or 1.0) * 50 * k / 4)
        assert out.expert_load.tolist() == [capacity] * 4


def test_topk_with_a_capacity_that_drops_nothing_equals_dropless_topk():
    x = torch.randn(40, 16, requires_grad=True)
    outputs, grads = [], []
    for capacity_factor in (None, 4.0):  # 4 experts x factor 4: an expert could take every (token, slot) pair
        moe = layer(k=2, capacity_factor=capacity_factor)
        out = moe(x)
        out.y.square().sum().backward()
        outputs.append(out.y.detach())
        grads.append(moe.w1.grad.clone())
        assert out.dropped_fraction is None or float(out.dropped_fraction) == 0.0
    torch.testing.assert_close(outputs[0], outputs[1], rtol=0, atol=0)
    torch.testing.assert_close(grads[0], grads[1], rtol=0, atol=0)


def test_the_switch_balance_loss_is_one_at_perfect_top1_balance():
    experts = 4
    index = torch.arange(40).remainder(experts).unsqueeze(1)  # every expert gets 10 of 40 tokens
    uniform = torch.full((40, experts), 1 / experts)
    assert float(switch_balance(uniform, index, 1)) == pytest.approx(1.0)
    collapsed = torch.zeros(40, 1, dtype=torch.long)
    assert float(switch_balance(torch.nn.functional.one_hot(collapsed[:, 0], experts).float(), collapsed, 1)) == pytest.approx(4.0)


@pytest.fixture(scope="module")
def digits():
    return load_dataset(DataSettings(name="digits", max_train_samples=600), seed=0)


def train(model, data, epochs: int) -> list[dict]:
    settings = TrainSettings.from_dict({"epochs": epochs, "batch_size": 32, "lr": 0.01})
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    shuffle = torch.Generator().manual_seed(0)
    return [train_one_epoch(model, data, optimizer, shuffle, settings) for _ in range(epochs)]


def test_bias_balancing_lowers_maxvio_and_the_bias_gets_no_gradient(digits):
    max_vio = {}
    for balance in ("none", "bias"):
        torch.manual_seed(0)
        model = build_model("moe_routed", digits.d_in, digits.d_out,
                            {"num_experts": 4, "hidden": 16, "balance": balance, "bias_rate": 0.01}, digits.input_shape)
        rows = train(model, digits, 3)
        max_vio[balance] = rows[-1]["max_vio"]
        if balance == "bias":
            bias = model.moe.expert_bias
            assert not bias.requires_grad and all(bias is not p for p in model.parameters())
            assert bias.abs().sum() > 0  # it moved
            assert "moe.expert_bias" in model.state_dict()  # a resumed run continues with it
    assert max_vio["bias"] < max_vio["none"], max_vio


def test_hash_routes_an_input_to_the_same_expert_every_epoch_and_has_no_router(digits):
    torch.manual_seed(0)
    model = build_model("moe_routed", digits.d_in, digits.d_out,
                        {"num_experts": 4, "hidden": 16, "router": "hash", "balance": "none"}, digits.input_shape)
    assert model.moe.router is None
    assert not [name for name, _ in model.named_parameters() if "router" in name]

    def experts():
        model.eval()
        with torch.no_grad():
            return model(digits.x_test).expert_index[:, 0]

    before = experts()
    train(model, digits, 2)
    assert torch.equal(before, experts())
    shares = torch.bincount(before, minlength=4).float() / len(before)
    assert shares.min() > 0.15  # balanced in expectation: 4 experts, a few hundred samples


@pytest.mark.parametrize("params", [
    {"granularity": 2, "k": 1},
    {"granularity": 4, "k": 2, "num_experts": 3},
    {"shared_experts": 2},
    {"shared_experts": 1, "granularity": 2, "batch_norm": False},
    {"router": "hash", "balance": "none", "shared_experts": 1},
    {"router": "expert_choice", "k": 2},
    {"router": "sinkhorn", "noisy_gating": False, "backbone": "cnn", "backbone_width": 8},
    {"noisy_gating": True, "balance": "bias"},
])
def test_parameter_counts_without_torch_equal_the_built_models(params):
    spec = get_model_spec("moe_routed")
    params = {"num_experts": 4, "hidden": 16, **params}
    assert spec.check(params) == []
    counts = spec.parameter_counts(64, 10, params, (8, 8))
    model = build_model("moe_routed", 64, 10, params, (8, 8)).eval()
    assert counts.total == count_parameters(model)
    assert counts.active == model.active_parameters()


def test_granularity_keeps_the_expert_parameters_and_shared_experts_add_theirs():
    spec = get_model_spec("moe_routed")
    base = {"num_experts": 4, "hidden": 16, "k": 1, "batch_norm": False}
    plain, fine = (spec.parameter_counts(64, 10, {**base, "granularity": m}) for m in (1, 4))
    router = lambda experts: 64 * experts + experts
    out_biases = lambda experts: 10 * experts
    # the expert weights are the same; the router and the experts' output biases grow with the split
    assert fine.total - router(16) - out_biases(16) == plain.total - router(4) - out_biases(4)
    assert fine.active - router(16) - out_biases(4) == plain.active - router(4) - out_biases(1)
    shared = spec.parameter_counts(64, 10, {**base, "shared_experts": 1})
    expert = 64 * 16 + 16 + 16 * 10 + 10
    assert (shared.total - plain.total, shared.active - plain.active) == (expert, expert)


def test_expert_choice_predictions_are_measured_for_their_batch_dependence(digits):
    from moelab.train.evaluate import test_results

    torch.manual_seed(0)
    model = build_model("moe_routed", digits.d_in, digits.d_out,
                        {"num_experts": 4, "hidden": 16, "router": "expert_choice"}, digits.input_shape)
    train(model, digits, 1)
    results = test_results(model, digits, TrainSettings.from_dict({"eval_batch_size": 64}))
    assert 0.0 < results["test_batch_dependence"] <= 1.0
    topk = build_model("moe_routed", digits.d_in, digits.d_out, {"num_experts": 4, "hidden": 16}, digits.input_shape)
    assert "test_batch_dependence" not in test_results(topk, digits, TrainSettings.from_dict({}))


REFUSED = {
    "hash with balancing": ({"router": "hash"}, "router=hash has no router to balance or regularise: set balance: none"),
    "hash with k": ({"router": "hash", "balance": "none", "k": 2}, "router=hash sends each sample to one expert: k must be 1"),
    "bias without token choice": ({"router": "sinkhorn", "balance": "bias"}, "balance=bias needs router=topk"),
    "noise without topk": ({"router": "expert_choice", "noisy_gating": True}, "noisy_gating and gate_noise belong to router=topk"),
    "granularity not dividing": ({"hidden": 10, "granularity": 3}, "granularity=3 must divide hidden=10"),
    "unknown router": ({"router": "random"}, "variants.r.router: must be one of"),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_combinations_that_make_no_sense_exit_2_naming_the_variant(case, write_experiment, tmp_path, monkeypatch, capsys):
    params, expected = REFUSED[case]
    path = write_experiment({"name": "refused", "data": {"name": "digits"}, "train": {"epochs": 1},
                             "variants": [{"name": "r", "model": "moe_routed", **params}]})
    monkeypatch.chdir(tmp_path)
    assert main(["run_here", str(path), "--experiments-dir", "out"]) == 2
    stderr = capsys.readouterr().err
    assert expected in stderr and "variants.r" in stderr, stderr
    assert not (tmp_path / "out").exists()


def test_maxvio_counts_every_assignment_of_a_sample():
    from moelab.train.trainer import max_violation

    assert max_violation([10.0, 10.0, 10.0, 10.0]) == 0.0
    assert max_violation([20.0, 10.0, 5.0, 5.0]) == pytest.approx(1.0)
    torch.manual_seed(0)
    data = load_dataset(DataSettings(name="digits", max_train_samples=200), seed=0)
    model = build_model("moe_routed", data.d_in, data.d_out, {"num_experts": 8, "hidden": 16, "granularity": 4}, data.input_shape)
    row = train(model, data, 1)[0]
    assert row["max_vio"] < max_violation([s * 1000 for s in row["expert_load"]])  # top-4: more even than first choices


def test_a_top1_router_learns_from_the_task_loss():
    # weighted by its router probability (Switch), not by 1: without any balance loss the router still
    # gets a gradient; moe_switch keeps today's weight of 1
    x = torch.randn(32, 64)
    for balance in ("none", "bias"):
        model = build_model("moe_routed", 64, 10, {"num_experts": 4, "hidden": 16, "balance": balance})
        model(x).y.square().sum().backward()
        assert model.moe.router.weight.grad.abs().sum() > 0, balance
    switch = build_model("moe_switch", 64, 10, {"num_experts": 4, "hidden": 16, "switch_balance": 0.0})
    switch(x).y.square().sum().backward()
    assert switch.moe.router.weight.grad is None or switch.moe.router.weight.grad.abs().sum() == 0


def test_maxvio_of_expert_choice_is_zero_every_expert_being_full():
    torch.manual_seed(0)
    data = load_dataset(DataSettings(name="digits", max_train_samples=192), seed=0)  # 6 full batches of 32
    model = build_model("moe_routed", data.d_in, data.d_out, {"num_experts": 4, "hidden": 16, "router": "expert_choice"},
                        data.input_shape)
    assert train(model, data, 1)[0]["max_vio"] == 0.0


def test_the_hash_seed_chooses_another_fixed_assignment():
    from moelab.models.moe import hash_experts

    keys = torch.randn(400, 64)
    by_seed = {seed: hash_experts(keys, seed, 4) for seed in (0, 1, 7, 123_456)}
    for seed, experts in by_seed.items():
        assert torch.equal(experts, hash_experts(keys, seed, 4))  # fixed
        assert torch.bincount(experts, minlength=4).min() > 60  # balanced in expectation
    assert not torch.equal(by_seed[0], by_seed[7]) and not torch.equal(by_seed[1], by_seed[123_456])
