"""A search's journal damaged by a killed writer or by something else: the study goes on from what
it can trust, or stops with one message naming the file and the recovery, never a traceback."""

from __future__ import annotations

import pytest
import yaml

from conftest import launch
from moelab.config import load_experiment
from moelab.results.errors import DamagedRecord
from moelab.results.tree import ExperimentTree
from test_search import study_doc


def started_study(write_experiment, tmp_path, told: int = 2):
    """A study with `told` finished trials (no training: values told by hand), and its experiment file."""
    from moelab.search import StudySession

    path = write_experiment(study_doc(n_trials=4, parallel=1))
    session = StudySession(ExperimentTree(tmp_path / "out" / "tuned"), load_experiment(path))
    session.create()
    for value in (0.5, 0.6)[:told]:
        run = session.next_trial()
        run.study.tell(run.trial, value)
        run.release()
    return session, path


def reopened(session):
    from moelab.search import StudySession

    return StudySession(session.tree, session.experiment)


def test_a_torn_last_record_is_set_aside_and_the_study_goes_on(write_experiment, tmp_path, capsys):
    session, _ = started_study(write_experiment, tmp_path)
    journal = session.files.journal
    whole = journal.read_bytes()
    last = whole[: -1].rsplit(b"\n", 1)[1]
    journal.write_bytes(whole + last[: len(last) // 2])  # a writer killed halfway through its append
    again = reopened(session)
    assert again.progress().complete == 2
    run = again.next_trial()  # appends: must start on a line of its own
    run.study.tell(run.trial, 0.7)
    run.release()
    assert reopened(session).progress().complete == 3
    aside = list(session.files.path.glob("journal.torn-*.log"))
    assert len(aside) == 1 and aside[0].read_bytes() == last[: len(last) // 2]
    assert journal.name in capsys.readouterr().err


@pytest.mark.parametrize("damage", [b"\x00\xff\xfe binary\n", b"not a record\n", b"[1, 2]\n", b"\n"],
                         ids=["binary", "text", "json-list", "empty-line"])
def test_a_damaged_record_inside_stops_the_search_with_one_message(write_experiment, tmp_path, damage):
    session, path = started_study(write_experiment, tmp_path)
    journal = session.files.journal
    lines = journal.read_bytes().splitlines(keepends=True)
    journal.write_bytes(b"".join(lines[:2] + [damage] + lines[2:]))
    before = journal.read_bytes()
    with pytest.raises(DamagedRecord, match="line 3 is not a study record"):
        reopened(session).progress()
    for mode in ("status", "run_here"):
        done = launch(tmp_path, mode, str(path), "--experiments-dir", "out")
        assert done.returncode == 2, done.stderr
        assert "out/tuned/study/journal.log: line 3" in done.stderr and "Traceback" not in done.stderr + done.stdout
        assert "move it aside" in done.stderr
    assert journal.read_bytes() == before  # nothing guessed, nothing rewritten
    assert not (session.tree.path / "launches").exists()


def test_a_journal_that_is_a_folder_is_named(write_experiment, tmp_path):
    path = write_experiment(study_doc())
    journal = ExperimentTree(tmp_path / "out" / "tuned").study.journal
    journal.mkdir(parents=True)
    done = launch(tmp_path, "status", str(path), "--experiments-dir", "out")
    assert done.returncode == 2 and "out/tuned/study/journal.log" in done.stderr and "Traceback" not in done.stderr, done.stderr
