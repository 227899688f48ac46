"""submit refuses what the cluster would refuse before anything is written, and a submission sbatch
refuses leaves the experiments tree as it was. The cluster tests need the dev cluster (`slurm`
marker); the sbatch failure uses fake SLURM commands and runs anywhere."""

from __future__ import annotations

import subprocess

import pytest

from conftest import TINY, launch, wait_until
from moelab.launch.slurm.backend import SlurmFiles
from moelab.results.tree import ExperimentTree
from test_slurm_fakes import fake_slurm  # noqa: F401 (a fixture)


def files_of(folder) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def profile(tmp_path):
    path = tmp_path / "profile.yaml"
    path.write_text("cpus_per_task: 1\nmem_gb: 1\ntimeout_min: 10\n")
    return path


@pytest.mark.slurm
@pytest.mark.parametrize("dry_run", [[], ["--dry-run"]], ids=["submit", "dry-run"])
@pytest.mark.parametrize("override, key, named", [
    ("slurm.partition=no_such_partition", "slurm.partition", "debug"),
    ("slurm.account=no_such_account", "slurm.account", "root"),
    ("slurm.qos=no_such_qos", "slurm.qos", "normal"),
    ("slurm.gpus_per_node=1", "slurm.gpus_per_node", "(null)"),
], ids=["partition", "account", "qos", "gpus"])
def test_a_resource_the_cluster_does_not_offer_is_refused_before_anything_is_written(
        write_experiment, tmp_path, profile, override, key, named, dry_run):
    from test_slurm import cluster_answers

    if cluster_answers():
        pytest.skip(f"no SLURM cluster answers ({cluster_answers()})")
    experiment = write_experiment()
    before = files_of(tmp_path)
    done = launch(tmp_path, "submit", str(experiment), override, "--profile", str(profile), "--experiments-dir", "out",
                  *dry_run)
    assert done.returncode == 2, done.stdout + done.stderr
    assert key in done.stderr and named in done.stderr and str(experiment) in done.stderr
    assert override.split("=")[1] in done.stderr or key == "slurm.gpus_per_node"
    assert "Traceback" not in done.stderr
    assert files_of(tmp_path) == before


SBATCH_REFUSES = 'echo "sbatch: error: Batch job submission failed: Invalid account or account/partition combination specified" >&2; exit 1'


def quiet_cluster(fake_slurm, sbatch: str) -> None:
    """Fake SLURM commands: one partition without GPUs, no limits, an empty queue, and `sbatch`."""
    fake_slurm(sinfo='echo "debug*|(null)"', sacctmgr="true", squeue="true", sacct="true", srun="true",
               scancel="true", scontrol='echo "MaxArraySize = 1001"', sbatch=sbatch)


def test_a_submission_sbatch_refuses_is_one_message_and_writes_nothing(write_experiment, tmp_path, profile, fake_slurm):
    quiet_cluster(fake_slurm, SBATCH_REFUSES)
    experiment = write_experiment()
    done = launch(tmp_path, "submit", str(experiment), "--profile", str(profile), "--experiments-dir", "out")
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stderr.count("error") == 2 and "Invalid account" in done.stderr, done.stderr  # sbatch's, quoted once
    assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr
    assert not (tmp_path / "out").exists()


def test_a_refused_resubmission_leaves_the_earlier_tree_as_it_was(write_experiment, tmp_path, profile, fake_slurm):
    quiet_cluster(fake_slurm, 'echo "Submitted batch job 41"')
    experiment = write_experiment()
    first = launch(tmp_path, "submit", str(experiment), "--profile", str(profile), "--experiments-dir", "out")
    assert first.returncode == 0 and "submitted 4 job(s)" in first.stdout, first.stdout + first.stderr
    tree = tmp_path / "out" / "tiny"
    before = files_of(tree)
    quiet_cluster(fake_slurm, SBATCH_REFUSES)
    again = launch(tmp_path, "submit", str(experiment), "train.lr=0.01", "--profile", str(profile),
                   "--experiments-dir", "out")
    assert again.returncode == 2 and "Invalid account" in again.stderr, again.stdout + again.stderr
    assert files_of(tree) == before


@pytest.mark.slurm
def test_a_job_cancelled_while_queued_is_submitted_again_by_a_plain_resubmit(write_experiment, tmp_path, profile):
    from test_slurm import cluster_answers, states

    if cluster_answers():
        pytest.skip(f"no SLURM cluster answers ({cluster_answers()})")
    experiment = write_experiment({**TINY, "grid": {}})
    args = ["--profile", str(profile), "--experiments-dir", "out"]
    held = launch(tmp_path, "submit", str(experiment), "slurm.additional_parameters={begin: now+1hour}", *args)
    assert held.returncode == 0, held.stdout + held.stderr
    files = SlurmFiles(ExperimentTree(tmp_path / "out" / "tiny"))
    [key] = files.submitted_ids()
    subprocess.run(["scancel", *files.submitted_ids()[key]], check=True)
    wait_until(lambda: states(experiment, tmp_path / "out").get(key) == "cancelled", 60, "SLURM to say CANCELLED")

    again = launch(tmp_path, "submit", str(experiment), "slurm.additional_parameters={begin: now+1hour}", *args)
    try:
        assert again.returncode == 0, again.stdout + again.stderr
        assert "1 to submit" in again.stdout and "submitted 1 job(s)" in again.stdout
        wait_until(lambda: states(experiment, tmp_path / "out")[key] == "queued", 60, "SLURM to list the new submission")
    finally:
        subprocess.run(["scancel", *files.submitted_ids()[key]])


def test_a_submission_refused_part_way_cancels_the_arrays_already_queued(write_experiment, tmp_path, profile,
                                                                        fake_slurm):
    """4 tasks in arrays of 2: the first array is queued, the second refused; the first is cancelled
    (its tasks would pull a plan that is rolled back) and nothing is left behind."""
    cancelled = tmp_path / "scancel.args"
    counter = tmp_path / "sbatch.calls"
    quiet_cluster(fake_slurm, f'echo x >> "{counter}"; [ "$(wc -l < "{counter}")" -eq 1 ] && '
                              f'{{ echo "Submitted batch job 41"; exit 0; }}; {SBATCH_REFUSES}')
    fake_slurm(scancel=f'echo "$@" >> "{cancelled}"')
    experiment = write_experiment()
    done = launch(tmp_path, "submit", str(experiment), "slurm.jobs_per_task=1", "slurm.max_array_size=2",
                  "--profile", str(profile), "--experiments-dir", "out")
    assert done.returncode == 2 and "Invalid account" in done.stderr, done.stdout + done.stderr
    assert cancelled.read_text().split() == ["41"]
    assert not (tmp_path / "out").exists()


def test_a_bad_value_of_the_site_profile_names_the_profile(write_experiment, tmp_path, fake_slurm):
    quiet_cluster(fake_slurm, "exit 1")
    profile = tmp_path / "site.yaml"
    profile.write_text("partition: gpu\n")
    experiment = write_experiment()
    done = launch(tmp_path, "submit", str(experiment), "--profile", str(profile), "--experiments-dir", "out")
    assert done.returncode == 2, done.stdout + done.stderr
    assert f"slurm.partition (in {profile}): 'gpu' is not a partition" in done.stderr and "debug" in done.stderr
    assert not (tmp_path / "out").exists()
