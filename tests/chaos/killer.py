"""Run `tunesmith ...` and SIGKILL it at an exact point of its file writes (the chaos tests' driver).

    python tests/chaos/killer.py SPEC TRACE -- tunesmith-args...

SPEC is `none` (run to the end), or `WHEN:OP:PATTERN:N`: kill the process before/after (WHEN) the N-th call of OP
(fsync, replace, rename, any) made by tunesmith.files on a path containing PATTERN. Every such call is appended to
TRACE as `op<TAB>path` lines, so a first run with `none` shows the points a test can choose from. The kill is a
real SIGKILL of this process: no handler, finally block or atexit hook runs, as after `kill -9` or a power cut.
Only tunesmith.files' view of `os` is wrapped; tunesmith's code runs unchanged.
"""

from __future__ import annotations

import os
import signal
import sys


class KillingOs:
    def __init__(self, spec: str, trace: str):
        self._trace = open(trace, "a", buffering=1)
        self._when = None
        if spec != "none":
            self._when, self._op, self._pattern, n = spec.split(":", 3)
            self._left = int(n)

    def __getattr__(self, name):
        return getattr(os, name)

    def _call(self, op: str, path: str, function, *args):
        self._trace.write(f"{op}\t{path}\n")
        hit = self._when is not None and self._op in (op, "any") and self._pattern in path
        if hit:
            self._left -= 1
        if hit and self._left == 0 and self._when == "before":
            os.kill(os.getpid(), signal.SIGKILL)
        result = function(*args)
        if hit and self._left == 0 and self._when == "after":
            os.kill(os.getpid(), signal.SIGKILL)
        return result

    def fsync(self, fd):
        try:
            path = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            path = "?"
        return self._call("fsync", path, os.fsync, fd)

    def replace(self, src, dst):
        return self._call("replace", str(dst), os.replace, src, dst)

    def rename(self, src, dst):
        return self._call("rename", str(dst), os.rename, src, dst)


def main() -> None:
    spec, trace, sep, *args = sys.argv[1:]
    assert sep == "--"
    import tunesmith.files as files

    files.os = KillingOs(spec, trace)
    sys.argv = ["tunesmith", *args]
    from tunesmith.cli import main as tunesmith

    tunesmith()


if __name__ == "__main__":
    main()
