"""tunesmith runs offline: importing it and what training imports (peft, and through it bitsandbytes) opens no
network connection, even where the user never set HF_HUB_OFFLINE (bitsandbytes 0.50 asks the Hugging Face Hub for a
compiled kernel at import time on CPUs with AVX512-BF16), and that lookup's failure prints nothing."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

PROBE = textwrap.dedent("""
    import socket
    attempts = []
    def connect(self, address):  # the test's own instrumentation: record every attempt, refuse it
        attempts.append(address)
        raise OSError("network refused by the test")
    socket.socket.connect = connect
    socket.create_connection = lambda address, *a, **k: connect(None, address)

    import tunesmith
    import huggingface_hub.constants
    import peft  # imports bitsandbytes where it is installed
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        pass
    from tunesmith.train.run import setup  # noqa: F401  (the training stack as `tunesmith train` imports it)
    print("OFFLINE", huggingface_hub.constants.HF_HUB_OFFLINE)
    print("ATTEMPTS", len(attempts), attempts[:3])
""")


def _run(env_offline: str | None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    if env_offline is not None:
        env["HF_HUB_OFFLINE"] = env_offline
    return subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env=env, timeout=300)


def test_importing_the_training_stack_opens_no_connection_and_prints_no_kernel_noise():
    proc = _run(None)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "OFFLINE True" in proc.stdout
    assert "ATTEMPTS 0 []" in proc.stdout, proc.stdout
    assert "kernels-community" not in proc.stderr, proc.stderr[-2000:]


def test_a_user_who_sets_hf_hub_offline_keeps_their_setting():
    proc = _run("0")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "OFFLINE False" in proc.stdout
