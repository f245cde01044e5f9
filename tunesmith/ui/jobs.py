"""Trainings and evaluations started from the web UI: the ordinary `tunesmith train` / `tunesmith eval` commands,
each in its own subprocess, writing the ordinary run or report folder (so the UI adds no second implementation).

A job's output goes to a log beside what it writes (`ui-train.log` in the run folder, `ui-eval.log` in the report
folder). Stop sends SIGINT, exactly like Ctrl-C in a terminal: every file already written stays complete and
`train --resume` continues from the last checkpoint.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from tunesmith.files import append_text
from tunesmith.records import TunesmithError

EXIT_MARK = "[tunesmith ui] exited with code "
STOP_GRACE_SECONDS = 60.0  # after SIGINT, how long a job may take to finish its current step before SIGTERM


class Busy(TunesmithError):
    pass


@dataclass
class Job:
    id: str
    kind: str  # "train" or "eval"
    target: Path  # the run or report folder it writes
    args: list[str]  # after `tunesmith`
    cwd: Path
    log: Path
    process: subprocess.Popen
    started: float = field(default_factory=time.time)
    stop_requested: bool = False

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    @property
    def returncode(self) -> int | None:
        return self.process.poll()

    @property
    def command(self) -> str:
        return "tunesmith " + shlex.join(self.args)

    def last_error(self) -> str | None:
        return last_error(self.log)

    def stop(self) -> None:
        """Ctrl-C for the subprocess; SIGTERM, then SIGKILL, if it does not end in time."""
        if not self.running:
            return
        self.stop_requested = True
        self.process.send_signal(signal.SIGINT)

        def escalate() -> None:
            try:
                self.process.wait(STOP_GRACE_SECONDS)
            except subprocess.TimeoutExpired:
                self.process.terminate()
                try:
                    self.process.wait(10)
                except subprocess.TimeoutExpired:
                    self.process.kill()

        threading.Thread(target=escalate, name=f"stop-{self.id}", daemon=True).start()


def last_error(log: Path) -> str | None:
    """The error a failed command printed (its `error:` message, else its last lines)."""
    lines = tail(log, 60).splitlines()
    for i, line in enumerate(lines):
        if line.startswith("error:"):
            return "\n".join(lines[i:]).split(EXIT_MARK)[0].strip()
    body = [line for line in lines if not line.startswith(EXIT_MARK)]
    return "\n".join(body[-8:]).strip() or None


def exit_code_in_log(log: Path) -> int | None:
    """The exit code a UI job left at the end of its log (None while it runs, or when the UI was stopped first)."""
    for line in reversed(tail(log, 5).splitlines()):
        if line.startswith(EXIT_MARK):
            try:
                return int(line[len(EXIT_MARK):].split()[0])
            except (ValueError, IndexError):
                return None
    return None


def tail(path: Path, lines: int = 200, max_bytes: int = 64_000) -> str:
    """The last `lines` lines of a text file ('' when it does not exist)."""
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - max_bytes))
            data = f.read()
    except OSError:
        return ""
    text = data.decode("utf-8", errors="replace").replace("\r", "\n")
    return "\n".join([line for line in text.splitlines() if line.strip()][-lines:])


def job_environment() -> dict[str, str]:
    """The environment of a job: unbuffered plain output, and Ctrl-C restored in it (cli.restore_ctrl_c), so that Stop
    works even when the UI itself was started with SIGINT ignored."""
    from tunesmith.cli import UI_JOB_ENV

    return {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "120", "TERM": "dumb", UI_JOB_ENV: "1"}


class Jobs:
    def __init__(self, max_jobs: int = 1):
        self.max_jobs = max_jobs
        self.jobs: dict[str, Job] = {}
        self._lock = threading.Lock()

    def running(self) -> list[Job]:
        return [j for j in self.jobs.values() if j.running]

    def for_target(self, target: Path) -> Job | None:
        """The latest job that writes `target`."""
        found = [j for j in self.jobs.values() if j.target == target]
        return max(found, key=lambda j: j.started) if found else None

    def start(self, kind: str, target: Path, args: list[str], cwd: Path, log: Path) -> Job:
        with self._lock:
            busy = self.running()
            if any(j.target == target for j in busy):
                raise Busy(f"{target.name} is already being written by a running job")
            if len(busy) >= self.max_jobs:
                raise Busy(f"{len(busy)} job(s) already running ({', '.join(j.target.name for j in busy)}); wait for "
                           "it to finish or stop it (the limit is the UI's max_jobs setting)")
            append_text(log, f"$ tunesmith {shlex.join(args)}\n")
            env = job_environment()
            with open(log, "ab") as out:
                # Its own session: a Ctrl-C meant for the UI's terminal does not reach the job; the UI stops it itself.
                process = subprocess.Popen([sys.executable, "-m", "tunesmith.cli", *args], cwd=cwd, stdout=out,
                                           stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                           start_new_session=True)
            job = Job(uuid.uuid4().hex[:10], kind, target, args, cwd, log, process)
            self.jobs[job.id] = job

        def note_exit() -> None:
            code = process.wait()
            append_text(log, f"\n{EXIT_MARK}{code}\n")

        threading.Thread(target=note_exit, name=f"job-{job.id}", daemon=True).start()
        return job

    def shutdown(self, timeout: float = 30.0) -> None:
        """Stop every running job (SIGINT) and wait for them to end."""
        running = self.running()
        for job in running:
            job.stop()
        deadline = time.monotonic() + timeout
        for job in running:
            try:
                job.process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                job.process.kill()
