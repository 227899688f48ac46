"""SLURM cases a real cluster cannot produce on demand, with fake sacct/squeue/scontrol on PATH
(node failure, out of memory, accounting lag or absence), and the resource profile precedence."""

from __future__ import annotations

import os
import stat

import pytest

from moelab.config import ConfigError, load_experiment
from moelab.launch.plan import make_plan
from moelab.launch.slurm import queue
from moelab.launch.slurm.resources import load_resources, sbatch_parameters
from moelab.launch.status import print_status
from moelab.results.io import append_jsonl, write_json
from moelab.results.status import JobState, merge_states


@pytest.fixture
def fake_slurm(tmp_path, monkeypatch):
    """fake_slurm(sacct=..., squeue=..., scontrol=...): shell bodies for fake commands."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")

    def install(**commands: str) -> None:
        for name, body in commands.items():
            path = bin_dir / name
            path.write_text(f"#!/bin/sh\n{body}\n")
            path.chmod(path.stat().st_mode | stat.S_IEXEC)

    return install


def test_sacct_states_are_mapped_and_array_ranges_expanded(fake_slurm):
    fake_slurm(sacct="""cat <<'EOF'
7_0|COMPLETED|node1|12|0:0
7_1|NODE_FAIL|node2|30|0:0
7_2|OUT_OF_MEMORY|node1|5|0:125
7_3|CANCELLED by 0|node1|9|0:15
7_[4-5%2]|PENDING|None assigned|0|0:0
EOF""")
    records = queue.query(["7_0", "7_1", "7_2", "7_3", "7_4", "7_5", "8"])
    assert {k: r.moelab_state for k, r in records.items()} == {
        "7_0": None, "7_1": "node_fail", "7_2": "out_of_memory", "7_3": "cancelled", "7_4": "queued", "7_5": "queued"}
    assert records["7_1"].node == "node2" and records["7_4"].node == ""


def test_squeue_answers_when_accounting_is_disabled(fake_slurm):
    fake_slurm(sacct='echo "Slurm accounting storage is disabled" >&2; exit 1',
               squeue='printf "9_0|RUNNING|node1\\n9_1|PENDING|\\n"')
    records = queue.query(["9_0", "9_1", "9_2"])
    assert {k: r.moelab_state for k, r in records.items()} == {"9_0": "running", "9_1": "queued"}


def test_submit_allowance_counts_only_the_jobs_of_the_account_and_qos_a_limit_applies_to(fake_slurm):
    """Association limits count the user's jobs of that account, a QOS's per-user limit those of
    that QOS; with no account or QOS asked, SLURM's defaults (the user's default account, the
    association's default QOS) are the ones that apply."""
    fake_slurm(sacctmgr="""case "$*" in
  *"show user"*) echo lab ;;
  *"account=lab"*) echo "5||normal,long|normal" ;;
  *"account=big"*) echo "||normal,long|" ;;
  *"show qos"*) printf "normal|\nlong|3\n" ;;
esac""")
    queued = [queue.QueuedJob("lab", "normal")] * 2 + [queue.QueuedJob("big", "long")] * 2 + [queue.QueuedJob("x", "y")]
    assert queue.submit_allowance(None, None, queued) == 3  # lab's MaxSubmit 5, 2 of its jobs queued; QOS normal: none
    assert queue.submit_allowance("lab", "long", queued) == 1  # long's 3 per user, 2 queued (in account big)
    assert queue.submit_allowance("big", None, queued) == 1  # no default QOS: each allowed one, long the tightest
    assert queue.submit_allowance("big", "normal", queued) is None  # no limit applies


def test_no_slurm_at_all_is_a_clear_error(fake_slurm, monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    with pytest.raises(queue.QueueUnavailable, match="not found"):
        queue.query(["1"])


def test_max_array_size_is_read_from_scontrol(fake_slurm):
    fake_slurm(scontrol='printf "MaxArraySize            = 5\\nMaxJobCount = 10000\\n"')
    assert queue.max_array_size() == 5


def test_results_on_disk_win_over_a_lagging_sacct():
    assert merge_states("done", "running") == "done"
    assert merge_states("failed", "cancelled") == "failed"
    assert merge_states("interrupted", "queued") == "queued"  # requeued after a time limit
    assert merge_states("pending", "node_fail") == "node_fail"
    assert merge_states("interrupted", None) == "interrupted"


def tiny_experiment(tmp_path):
    from conftest import TINY
    import yaml

    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY))
    return load_experiment(path)


def test_queued_jobs_are_never_resubmitted_and_failures_only_on_request(tmp_path):
    experiment = tiny_experiment(tmp_path)
    keys = [job.key for job in experiment.jobs()]
    # keys[2] started on a node that failed; keys[3]'s task was cancelled before any worker took it
    write_json(tmp_path / "out" / "tiny" / "jobs" / keys[2] / "status.json", {"state": "interrupted", "attempts": 1,
                                                                            "variants": {}})
    queue_states = {keys[0]: JobState.QUEUED, keys[1]: JobState.RUNNING, keys[2]: JobState.NODE_FAIL,
                    keys[3]: JobState.CANCELLED}
    plan = make_plan(experiment, tmp_path / "out", queue_states=queue_states)
    assert [job.key for job in plan.to_run] == [keys[3]]  # it never ran: not a failure
    rerun = make_plan(experiment, tmp_path / "out", rerun_failed=True, queue_states=queue_states)
    assert [job.key for job in rerun.to_run] == [keys[2], keys[3]]
    forced = make_plan(experiment, tmp_path / "out", force=True, queue_states=queue_states)
    assert keys[0] not in [job.key for job in forced.to_run]


def test_status_merges_disk_and_sacct(fake_slurm, tmp_path, capsys):
    experiment = tiny_experiment(tmp_path)
    keys = [job.key for job in experiment.jobs()]
    root = tmp_path / "out" / "tiny"
    append_jsonl(root / "slurm" / "submissions.jsonl", {"array_job_id": "7", "jobs": {k: f"7_{i}" for i, k in enumerate(keys)}})
    write_json(root / "jobs" / keys[0] / "status.json", {"state": "done", "attempts": 2, "host": "n1", "elapsed_s": 75,
                                                        "variants": {}})
    for variant in ("mlp", "moe", "moe_topk", "moe_hard"):
        write_json(root / "jobs" / keys[0] / variant / "results.json", {"test_acc": 1.0})
    fake_slurm(sacct="""cat <<'EOF'
7_0|RUNNING|n1|80|0:0
7_1|OUT_OF_MEMORY|n2|5|0:125
7_2|PENDING|None assigned|0|0:0
EOF""")
    assert print_status(experiment, tmp_path / "out") == 0
    out = capsys.readouterr().out
    lines = {line.split()[0]: line for line in out.splitlines() if line[:12] in keys}
    assert "DONE" in lines[keys[0]] and "4/4" in lines[keys[0]] and "0:01:15" in lines[keys[0]]
    assert "OUT_OF_MEMORY" in lines[keys[1]] and "n2" in lines[keys[1]]
    assert "QUEUED" in lines[keys[2]] and "NOT_STARTED" in lines[keys[3]]
    assert f"OUT_OF_MEMORY {keys[1]}: SLURM says OUT_OF_MEMORY (exit code 0:125)" in out
    assert "slurm/7_1_0_log.err" in out and "--rerun-failed" in out


def test_resources_profile_then_experiment_then_command_line(tmp_path):
    profile = tmp_path / "profile.yaml"
    profile.write_text("partition: gpu\nmem_gb: 16\ntimeout_min: 30\nsetup: [module load cuda]\n")
    experiment = tiny_experiment(tmp_path)
    path = experiment.source
    experiment = load_experiment(path, ["slurm.timeout_min=90"])
    resources = load_resources(experiment.doc["slurm"], profile)
    assert (resources["partition"], resources["mem_gb"], resources["timeout_min"]) == ("gpu", 16.0, 90)
    params = sbatch_parameters(resources, "moelab-tiny")
    assert params["partition"] == "gpu" and params["mem"] == "16GB" and params["time"] == 90
    assert params["setup"] == ["module load cuda"] and "gpus_per_node" not in params


def test_a_bad_profile_names_the_file_and_the_allowed_keys(tmp_path):
    profile = tmp_path / "profile.yaml"
    profile.write_text("partitoin: gpu\nmem_gb: lots\n")
    with pytest.raises(ConfigError) as caught:
        load_resources({}, profile)
    text = str(caught.value)
    assert str(profile) in text and "partitoin: unknown key (did you mean 'partition'?)" in text
    assert "allowed keys here: partition, account" in text and "mem_gb: must be a number > 0.0" in text


def test_submit_without_slurm_says_so_and_writes_nothing(tmp_path, monkeypatch, capsys):
    from moelab.launch.cli import main

    experiment = tiny_experiment(tmp_path)
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    monkeypatch.chdir(tmp_path)
    assert main(["submit", str(experiment.source), "--experiments-dir", "out"]) == 1
    assert "sbatch not found" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    assert main(["submit", str(experiment.source), "--experiments-dir", "out", "--dry-run"]) == 0
    assert "#SBATCH --array=0-3%" in capsys.readouterr().out and not (tmp_path / "out").exists()


def test_a_missing_profile_is_named_as_a_profile(tmp_path):
    with pytest.raises(ConfigError, match="file not found; a site profile is a YAML file like slurm/profile.yaml"):
        load_resources({}, tmp_path / "nope.yaml")


# --- values written into the sbatch script: a line break must not add a line of its own ---

INJECTED = "#SBATCH --uid=0"
INJECTIONS = {
    "partition": {"partition": f"gpu\n{INJECTED}"},
    "exclude": {"exclude": f"node1\n{INJECTED}"},
    "account": {"account": f"lab\r\n{INJECTED}"},
    "constraint": {"constraint": f"a100\n{INJECTED}"},
    "qos": {"qos": f"high\x00\n{INJECTED}"},
    "python": {"python": f"python\n{INJECTED}"},
    "additional_parameters value": {"additional_parameters": {"mail-type": f"END\n{INJECTED}"}},
    "additional_parameters key": {"additional_parameters": {f"mail-type=END\n{INJECTED}\n#": 1}},
    "additional_parameters unicode line separator": {"additional_parameters": {"comment": f"x\u2028{INJECTED}"}},
}


def dry_run(tmp_path, monkeypatch, capsys, slurm: dict, *extra: str) -> tuple[int, str, str]:
    from conftest import TINY
    import yaml
    from moelab.launch.cli import main

    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump({**TINY, "slurm": slurm}))
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))  # no scontrol: MaxArraySize is assumed
    monkeypatch.chdir(tmp_path)
    code = main(["submit", str(path), "--experiments-dir", "out", "--dry-run", *extra])
    out, err = capsys.readouterr()
    return code, out, err


def script_lines(out: str) -> list[str]:
    assert "# sbatch script of array 1" in out, out
    return out[out.index("#!/bin/bash"):].splitlines()


def test_valid_sbatch_values_each_stay_on_their_own_line(tmp_path, monkeypatch, capsys):
    slurm = {"partition": "gpu", "constraint": "a100|h100", "exclude": "node[01-03]", "account": "lab-1",
             "additional_parameters": {"mail-type": "END", "exclusive": True, "nice": 10, "comment": "it's a test"}}
    code, out, err = dry_run(tmp_path, monkeypatch, capsys, slurm)
    assert code == 0, err
    lines = script_lines(out)
    parameters = lines[lines.index("# Parameters") + 1: lines.index("# setup") - 1]
    assert all(line.startswith("#SBATCH --") for line in parameters), parameters
    assert {"#SBATCH --constraint='a100|h100'", "#SBATCH --exclude='node[01-03]'", "#SBATCH --exclusive",
            "#SBATCH --mail-type=END", "#SBATCH --nice=10", "#SBATCH --partition=gpu"} <= set(parameters)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("case", sorted(INJECTIONS))
def test_a_line_break_in_an_sbatch_value_is_refused(case, tmp_path, monkeypatch, capsys):
    code, out, err = dry_run(tmp_path, monkeypatch, capsys, INJECTIONS[case])
    assert code == 2, out
    key = next(iter(INJECTIONS[case]))
    assert "tiny.yaml: 1 problem" in err and f"  - slurm.{key}: " in err, err
    assert INJECTED not in out.splitlines() and "#SBATCH" not in out
    assert not (tmp_path / "out").exists()


def test_a_line_break_from_the_command_line_or_the_site_profile_is_refused(tmp_path, monkeypatch, capsys):
    override = 'slurm.partition="gpu\\n#SBATCH --uid=0"'  # a YAML double-quoted string: \n is a line break
    code, out, err = dry_run(tmp_path, monkeypatch, capsys, {}, override)
    assert code == 2 and "slurm.partition: must be a single line" in err and f"(set on the command line: {override})" in err
    assert "#SBATCH" not in out
    code, out, err = dry_run(tmp_path, monkeypatch, capsys, {}, 'slurm.additional_parameters={"x\\n#SBATCH --uid": 0}')
    assert code == 2 and "slurm.additional_parameters: option 'x\\n#SBATCH --uid' is not an sbatch option name" in err
    profile = tmp_path / "profile.yaml"
    profile.write_text('partition: "gpu\\n#SBATCH --uid=0"\nadditional_parameters: {exclusive: false}\n')
    code, out, err = dry_run(tmp_path, monkeypatch, capsys, {}, "--profile", str(profile))
    assert code == 2 and f"error: {profile}: 2 problems" in err and "  - partition: must be a single line" in err
    assert "  - additional_parameters: exclusive: got False: an option is either given" in err
    assert "#SBATCH" not in out and not (tmp_path / "out").exists()


def test_memory_is_never_rounded_down_to_zero(tmp_path):
    # --mem=0 asks SLURM for all the memory of a node
    resources = load_resources({"mem_gb": 0.0001}, None)
    assert sbatch_parameters(resources, "x")["mem"] == "1MB"
    assert sbatch_parameters({**resources, "mem_gb": 0.5}, "x")["mem"] == "512MB"
    assert sbatch_parameters({**resources, "mem_gb": 1.3}, "x")["mem"] == "1332MB"


def test_a_non_finite_memory_is_refused_before_it_reaches_the_script(tmp_path, monkeypatch, capsys):
    code, out, err = dry_run(tmp_path, monkeypatch, capsys, {"mem_gb": float("nan")})
    assert code == 2 and "slurm.mem_gb: must be a number > 0.0, got nan, which is not a finite number" in err


def test_status_reads_the_experiment_file_as_strictly_as_a_launch(tmp_path, capsys):
    from moelab.launch.cli import main

    path = tmp_path / "dup.yaml"
    path.write_text("name: dup\nvariants: [{name: mlp, model: mlp}]\nname: again\n")
    assert main(["status", str(path), "--experiments-dir", str(tmp_path / "out")]) == 2
    assert "name: duplicate key 'name' at lines 1 and 3" in capsys.readouterr().err
