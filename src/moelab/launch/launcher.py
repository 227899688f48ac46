"""`launch_experiment`: what `run_here` and `submit` do, callable from Python (the CLI, the tests
and the benchmarks all go through it).

    from moelab.launch import launch_experiment
    launch_experiment("experiments/configs/default.yaml", ["train.lr=0.01"], mode="run_here")

Order: validate the experiment and the backend's settings (exit 2 on a problem), the backend's
pre-flight and the dataset files of the jobs about to run (exit 1/2), and only then write the plan
and hand it to the backend.
"""

from __future__ import annotations

import sys
from pathlib import Path

from moelab.config import ConfigError, Experiment, load_experiment
from moelab.config.grid import check_data_files
from moelab.launch.backends import backend_class
from moelab.launch.base import Backend, LaunchFailed, LaunchOptions
from moelab.launch.plan import TreeBefore, make_plan, write_plan
from moelab.results.tree import ExperimentTree


def launch_experiment(experiment_file: str | Path, overrides: list[str] | tuple[str, ...] = (),
                      mode: str = "run_here", options: LaunchOptions | None = None) -> int:
    """Validate, plan and launch; returns the exit code (0 done, 1 failures, 2 bad input, 130 interrupted)."""
    options = options or LaunchOptions()
    try:
        experiment = load_experiment(experiment_file, overrides)
        backend = backend_class(mode)(experiment, options)
    except ConfigError as error:
        print(error, file=sys.stderr)
        return 2
    return launch(backend, experiment, options)


def launch(backend: Backend, experiment: Experiment, options: LaunchOptions) -> int:
    tree = ExperimentTree(Path(options.experiments_dir) / experiment.name)
    problem = backend.preflight(tree)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 1
    view = backend.queue_view(tree)
    if view.problem and not options.dry_run:
        print(f"error: cannot ask the queue about earlier submissions ({view.problem}); nothing was {backend.verb}ed",
              file=sys.stderr)
        return 1
    plan = make_plan(experiment, options.experiments_dir, force=options.force, rerun_failed=options.rerun_failed,
                     queue_states=view.states)
    if plan.search:
        from moelab.search import StudySession

        problem = StudySession(tree, experiment).mismatch()
        if problem:
            print(f"error: {problem}; nothing was {backend.verb}ed", file=sys.stderr)
            return 2
    # a search's trials read the data of its base experiment (unless the space changes it)
    data_issues = check_data_files(plan.to_run or (experiment.jobs()[:1] if plan.search else []))
    if data_issues:
        print(ConfigError(experiment.source, data_issues), file=sys.stderr)
        return 2
    variants = len(plan.jobs[0].config["variants"]) if plan.jobs else len(experiment.doc["variants"])
    if plan.search:  # with the dense ones baseline.match adds
        search = experiment.doc["search"]
        print(f"experiment {experiment.name}: {search['sampler']} search of {len(search['space'])} key(s), "
              f"{len(plan.experiment.jobs())} job(s) per trial x {variants} variant(s); "
              f"{plan.search.progress.describe()}; {plan.search.trials_to_start} to {backend.verb}, "
              f"{search['parallel']} at once -> {plan.tree.path}")
    else:
        print(f"experiment {experiment.name}: {len(plan.jobs)} job(s) x {variants} variant(s), "
              f"{len(plan.to_run)} to {backend.verb} -> {plan.tree.path}")
    for job in plan.to_run:
        if job.key in plan.continued_from:
            source = plan.continued_from[job.key]
            print(f"  {job.key} continues the finished job {source['job']}: {source['epochs']} -> "
                  f"{job.config['train']['epochs']} epochs, from its last checkpoints")
    if options.dry_run:
        return backend.dry_run(plan)
    before = TreeBefore.of(plan)
    plan.fuse = backend.fuse
    write_plan(plan, backend.mode, options.argv)
    try:
        code = backend.launch(plan)
    except LaunchFailed as error:
        before.restore(plan)
        print(f"error: {error}; nothing was started, {plan.tree.path} is as it was", file=sys.stderr)
        return 2
    return backend.finish(plan, code)
