"""`tunesmith train --nproc N [--nnodes M --node-rank R --master-addr HOST --master-port P]`: several training
processes on one engine, torchrun (torch.distributed.run).

torchrun starts the ranks and sets their rendezvous environment; each rank runs `tunesmith train` as usual, and
accelerate (tunesmith/train/run.py) joins the process group: gloo on CPU, NCCL on CUDA. Data parallel (DDP): every
rank trains a replica on its share of the micro-batch stream, gradients are averaged after each step's backward,
and the loss is normalised by the trained tokens of the whole step across ranks, so N processes x batch b is the
same optimisation as one process with grad_accum N and batch b (tested in tests/integration/test_distributed.py).
Only rank 0 writes files.

`accelerate launch --cpu --num_processes 2` was measured to run a single process silently on this machine:
torchrun is the launcher, and the tests check that two ranks really ran.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass

from tunesmith.threads import ENV, LAUNCHED_ENV, resolve_threads


@dataclass(frozen=True)
class Launch:
    nproc: int = 1  # processes on this node
    nnodes: int = 1
    node_rank: int = 0
    master_addr: str = "127.0.0.1"
    master_port: int = 29500

    @property
    def distributed(self) -> bool:
        return self.nproc > 1 or self.nnodes > 1

    def problems(self) -> list[str]:
        out = []
        if self.nproc < 1 or self.nnodes < 1:
            out.append("--nproc and --nnodes must be ≥ 1")
        if not 0 <= self.node_rank < max(self.nnodes, 1):
            out.append(f"--node-rank {self.node_rank} must be between 0 and --nnodes - 1 ({self.nnodes - 1})")
        if not 0 < self.master_port < 65536:
            out.append(f"--master-port {self.master_port} is not a TCP port")
        return out


def distributed_problems(cfg) -> list[str]:
    """What several processes cannot run (yet)."""
    if cfg.stages:
        return ["multi-stage runs (stages:) train in one process: drop --nproc/--nnodes, or train each stage as its own "
                "run with --nproc"]
    return []


def in_launched_rank() -> bool:
    """True inside a rank that torchrun (ours or the user's own) started."""
    return "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ


def torchrun_command(launch: Launch, train_args: list[str]) -> list[str]:
    """The torchrun command line that runs `tunesmith train TRAIN_ARGS` on every rank of this node."""
    return [sys.executable, "-m", "torch.distributed.run",
            f"--nproc-per-node={launch.nproc}", f"--nnodes={launch.nnodes}", f"--node-rank={launch.node_rank}",
            f"--master-addr={launch.master_addr}", f"--master-port={launch.master_port}",
            "-m", "tunesmith.cli", "train", *train_args]


def rank_environment(launch: Launch, threads: int | None) -> dict[str, str]:
    """Each rank gets its share of this node's threads (ranks of one node share its cores)."""
    per_rank = max(1, resolve_threads(threads)[0] // launch.nproc)
    return {**os.environ, ENV: str(per_rank), "OMP_NUM_THREADS": str(per_rank), LAUNCHED_ENV: "1"}


def launch_training(launch: Launch, train_args: list[str], threads: int | None) -> int:
    """Run torchrun for this node and wait; returns its exit code (a rank's failure fails the whole job)."""
    from rich.console import Console

    Console(stderr=True).print(
        f"[bold]torchrun[/]: {launch.nproc} process(es) on this node (node {launch.node_rank} of {launch.nnodes}), "
        f"rendezvous {launch.master_addr}:{launch.master_port}")
    return subprocess.run(torchrun_command(launch, train_args), env=rank_environment(launch, threads)).returncode
