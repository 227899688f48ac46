"""Expert parallelism: the MoE layer with its experts sharded over 2 gloo processes equals the
single-process layer, outputs and gradients, in training and inference."""

from __future__ import annotations

import copy
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from moelab.models.expert_parallel import expert_parallel_problem, expert_parameters, shard_experts
from moelab.models.moe import MoE

WORLD = 2
CASES = {
    "top1": dict(k=1, top1_probability=True),
    "top2": dict(k=2, aux_weights={"switch_balance": 0.01, "z_loss": 0.001}),
    "top2_batch_norm": dict(k=2, batch_norm=True),
    "bias_balance": dict(k=2, balance="bias"),
    "hash": dict(k=1, router="hash", balance="none"),
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _compare_every_case(rank: int, port: int) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        for case in sorted(CASES):
            try:
                _compare(rank, case)
            except AssertionError as error:
                raise AssertionError(f"case {case}: {error}") from error
    finally:
        dist.destroy_process_group()


def _compare(rank: int, case: str) -> None:
    torch.manual_seed(0)
    full = MoE(d_in=6, d_hidden=8, d_out=5, num_experts=4, **CASES[case])
    x = torch.randn(37, 6)  # an odd count: the ranks hold different numbers of tokens
    target = torch.randn(37, 5)
    sharded, task_only = copy.deepcopy(full), copy.deepcopy(full)
    shard_experts(sharded)
    mine = slice(0, 19) if rank == 0 else slice(19, 37)

    out = full(x)
    ((out.y * target).sum() + sum(out.aux_losses.values())).backward()
    local = sharded(x[mine])
    (local.y * target[mine]).sum().backward()

    torch.testing.assert_close(local.y, out.y[mine], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(local.expert_index, out.expert_index[mine])
    sharded_names = set(expert_parameters(sharded))
    experts = slice(2 * rank, 2 * rank + 2)
    for name, param in sharded.named_parameters():
        reference = dict(full.named_parameters())[name].grad
        if name in sharded_names:  # this rank's experts: every rank's tokens reach them
            torch.testing.assert_close(param.grad, reference[experts], atol=1e-5, rtol=1e-5, msg=name)
    if full.norm is not None:  # each expert's batch statistics are over the tokens of every rank
        torch.testing.assert_close(sharded.norm.running_mean, full.norm.running_mean[experts], atol=1e-6, rtol=1e-5)
    if sharded.router is not None:
        router_grad = sharded.router.weight.grad.clone()
        dist.all_reduce(router_grad)  # a replicated weight: the ranks' gradients add up to the layer's
        # the sharded loss has no auxiliary losses: compare with the layer's task gradient alone
        (task_only(x).y * target).sum().backward()
        torch.testing.assert_close(router_grad, task_only.router.weight.grad, atol=1e-5, rtol=1e-5)

    full.eval(), sharded.eval()
    with torch.no_grad():
        torch.testing.assert_close(sharded(x[mine]).y, full(x).y[mine], atol=1e-5, rtol=1e-5)


def test_two_ranks_equal_the_single_process_layer_for_every_covered_router():
    torch.set_num_threads(1)
    mp.spawn(_compare_every_case, args=(free_port(),), nprocs=WORLD, join=True)


@pytest.mark.parametrize("settings, words", [
    (dict(router="expert_choice", capacity_factor=1.0), "router 'expert_choice' is not covered"),
    (dict(router="sinkhorn"), "router 'sinkhorn' is not covered"),
    (dict(train_routing="soft"), "soft routing"),
    (dict(capacity_factor=1.25), "capacity factor"),
    (dict(num_experts=3), "num_experts=3 cannot be shared evenly by 2 processes"),
])
def test_what_expert_parallelism_does_not_cover_is_refused_with_the_reason(settings, words):
    layer = MoE(d_in=4, d_hidden=4, d_out=2, **{"num_experts": 4, **settings})
    assert words in expert_parallel_problem(layer, WORLD)


def test_a_layer_it_covers_has_no_problem():
    assert expert_parallel_problem(MoE(d_in=4, d_hidden=4, d_out=2, num_experts=4, k=2), WORLD) is None
