"""tunesmith/train/launch.py: the torchrun command line, each rank's share of threads, bad launch options."""

from __future__ import annotations

import sys

from tunesmith.threads import ENV, LAUNCHED_ENV
from tunesmith.train.launch import Launch, distributed_problems, rank_environment, torchrun_command


def test_torchrun_command_runs_tunesmith_train_on_every_rank():
    cmd = torchrun_command(Launch(2, 3, 1, "10.0.0.1", 29400), ["cfg.yaml", "--set", "train.lr=1e-4", "--resume"])
    assert cmd[:3] == [sys.executable, "-m", "torch.distributed.run"]
    assert {"--nproc-per-node=2", "--nnodes=3", "--node-rank=1", "--master-addr=10.0.0.1", "--master-port=29400"} <= set(cmd)
    assert cmd[-7:] == ["-m", "tunesmith.cli", "train", "cfg.yaml", "--set", "train.lr=1e-4", "--resume"]


def test_ranks_of_one_node_share_its_threads():
    env = rank_environment(Launch(nproc=2), threads=4)
    assert (env[ENV], env["OMP_NUM_THREADS"], env[LAUNCHED_ENV]) == ("2", "2", "1")
    assert rank_environment(Launch(nproc=4), threads=2)[ENV] == "1"  # never 0


def test_bad_launch_options_are_all_reported():
    assert Launch().problems() == [] and not Launch().distributed
    problems = Launch(nproc=2, nnodes=2, node_rank=2, master_port=70000).problems()
    assert len(problems) == 2 and "--node-rank 2" in problems[0] and "70000" in problems[1]


def test_multi_stage_runs_are_refused_with_several_processes():
    class Cfg:
        stages = [object()]

    assert "multi-stage" in distributed_problems(Cfg())[0]
