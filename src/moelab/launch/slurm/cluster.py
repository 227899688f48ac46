"""The resources of a submission checked against what the cluster offers (partitions and their GPUs
from sinfo, the accounts and QOS this user may use from accounting), before anything is written:
a wrong name is one message naming the key and the valid values, not an sbatch error."""

from __future__ import annotations

import getpass
import re

from moelab.launch.slurm.queue import QueueUnavailable, ask_slurm
from moelab.schema import Issue


def partitions() -> tuple[dict[str, list[str]], str | None]:
    """partition -> its nodes' generic resources (sinfo %G, e.g. 'gpu:a100:4(S:0-1)'), and the default one."""
    found: dict[str, list[str]] = {}
    default = None
    for line in ask_slurm(["sinfo", "-h", "-o", "%P|%G"]).splitlines():
        name, _, gres = line.partition("|")
        if name.endswith("*"):
            name = default = name[:-1]
        if name:
            found.setdefault(name, []).append(gres)
    return found, default


def gpus_per_node(gres: list[str]) -> int:
    """The most GPUs one node of these gres strings has ('gpu:4', 'gpu:a100:4(S:0-1)', '(null)': 0)."""
    counts = [int(m.group(1)) for entry in gres for item in entry.split(",")
              if (m := re.match(r"gpu(?::[^:(]+)?:(\d+)", item.strip()))]
    return max(counts, default=0)


def associations() -> tuple[set[str], set[str]]:
    """The accounts and QOS this user's associations allow (sacctmgr show assoc)."""
    accounts, qos = set(), set()
    out = ask_slurm(["sacctmgr", "-n", "-P", "show", "assoc", "where", f"user={getpass.getuser()}", "format=Account,QOS"])
    for line in out.splitlines():
        account, _, names = line.partition("|")
        accounts |= {account} if account else set()
        qos |= {q for q in names.split(",") if q}
    return accounts, qos


def resource_issues(resources: dict) -> list[Issue]:
    """What the cluster would refuse: a partition it does not have, more GPUs than a node of the
    partition has, an account or QOS this user may not use. Raises QueueUnavailable when sinfo
    cannot be asked; without accounting, accounts and QOS are left to sbatch."""
    issues = []
    found, default = partitions()
    partition = resources["partition"]
    if partition and partition not in found:
        issues.append(Issue("slurm.partition", f"'{partition}' is not a partition of this cluster; its partitions "
                                               f"(sinfo): {', '.join(sorted(found))}"))
    wanted_gpus = resources["gpus_per_node"]
    where = partition if partition in found else default
    if wanted_gpus and where is not None:
        has = gpus_per_node(found[where])
        if wanted_gpus > has:
            with_gpus = sorted(p for p, gres in found.items() if gpus_per_node(gres) >= wanted_gpus)
            issues.append(Issue("slurm.gpus_per_node", f"{wanted_gpus} GPU(s) per node asked, but the nodes of partition "
                                f"'{where}' have {has} (sinfo gres: {', '.join(sorted(set(found[where])))}); "
                                + (f"partitions with enough: {', '.join(with_gpus)}" if with_gpus
                                   else "no partition has that many: ask for fewer, or 0 to train on CPUs")))
    try:
        accounts, qos = associations()
    except QueueUnavailable:
        return issues
    for key, valid in (("account", accounts), ("qos", qos)):
        value = resources[key]
        if value and valid and value not in valid:
            issues.append(Issue(f"slurm.{key}", f"'{value}' is not one of yours; yours (sacctmgr show assoc): "
                                                f"{', '.join(sorted(valid))}"))
    return issues
