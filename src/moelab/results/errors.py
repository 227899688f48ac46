"""`DamagedRecord`: a file of the experiments tree that cannot be read and must not be guessed at."""

from __future__ import annotations

from pathlib import Path


class DamagedRecord(Exception):
    """A record whose damage moelab cannot repair by itself: the message names the file, what is wrong
    with it and what to do. Commands print it as one line (exit 2), never as a traceback."""

    def __init__(self, path: str | Path, problem: str, remedy: str):
        self.path, self.problem, self.remedy = Path(path), problem, remedy
        super().__init__(f"{path}: {problem}; {remedy}")
