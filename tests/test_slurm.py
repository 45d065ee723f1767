"""Runs on SLURM without torchrun (srun's variables), scoring that outlasts the group's timeout, and
tools/train.sbatch's save-requeue-resume on a signal; all on the CPU, SLURM's commands stubbed."""
import os
import signal
import stat
import subprocess
import sys

import pytest
import torch
from test_train import DDP_ARGS, PY, ROOT, ckpt, free_port, run, train_cmd, wait_for

from src.utils.distributed import cuda_index
from src.utils.errors import UserError
from src.utils.launch import expand_hostlist, find_launch, job_port

SBATCH = os.path.join(ROOT, "tools", "train.sbatch")


@pytest.mark.parametrize("text, hosts", [
    ("node7", ["node7"]),
    ("gpu[01-03,07],login1", ["gpu01", "gpu02", "gpu03", "gpu07", "login1"]),
    ("a[8-10]", ["a8", "a9", "a10"]),
    ("rack[1-2]-n[01,03]", ["rack1-n01", "rack1-n03", "rack2-n01", "rack2-n03"]),
    ("x[009-011],y", ["x009", "x010", "x011", "y"]),
])
def test_slurm_host_lists_expand_as_scontrol_show_hostnames(text, hosts):
    assert expand_hostlist(text) == hosts


def srun_env(rank, world, local=None, nodes="gpu[04-05]", job="481516"):
    """What srun gives task ``rank`` of a step of ``world`` tasks."""
    return {"SLURM_JOB_ID": job, "SLURM_PROCID": str(rank), "SLURM_LOCALID": str(rank if local is None else local),
            "SLURM_STEP_NUM_TASKS": str(world), "SLURM_NTASKS": str(world), "SLURM_STEP_NODELIST": nodes,
            "SLURM_JOB_NODELIST": nodes}


def test_srun_tasks_find_their_rank_and_rank_zeros_host():
    launch = find_launch(srun_env(5, 16, local=1))
    assert (launch.rank, launch.local_rank, launch.world_size, launch.launcher) == (5, 1, 16, "slurm")
    assert (launch.master_addr, launch.master_port) == ("gpu04", job_port("481516")) and launch.master_port == 16516
    mine = find_launch({**srun_env(0, 2), "MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "29400"})
    assert (mine.master_addr, mine.master_port) == ("10.0.0.1", 29400)  # the user's, where set
    env = {}
    launch.export(env)
    assert env == {"RANK": "5", "LOCAL_RANK": "1", "WORLD_SIZE": "16", "MASTER_ADDR": "gpu04",
                   "MASTER_PORT": "16516"}


def test_torchrun_wins_and_a_batch_script_or_one_task_is_a_single_process():
    torchrun = {"RANK": "3", "LOCAL_RANK": "3", "WORLD_SIZE": "4", "MASTER_ADDR": "h", "MASTER_PORT": "29500"}
    launch = find_launch({**srun_env(0, 2), **torchrun})  # srun torchrun ...: torchrun's ranks
    assert (launch.rank, launch.world_size, launch.launcher) == (3, 4, "torchrun")
    batch_shell = {k: v for k, v in srun_env(0, 8).items() if not k.startswith("SLURM_STEP")}
    assert find_launch(batch_shell) is None  # sbatch's own shell, --ntasks=8: python train.py there is one process
    assert find_launch(srun_env(0, 1)) is None and find_launch({}) is None


def test_each_local_rank_takes_its_own_gpu_or_the_one_it_is_bound_to(monkeypatch):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 8)
    assert [cuda_index(r) for r in (0, 3, 7)] == [0, 3, 7]
    with pytest.raises(UserError, match="local rank 8 on a node where this process sees 8 GPUs"):
        cuda_index(8)  # 16 tasks a node for 8 GPUs: two would share one
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert cuda_index(5) == 0  # srun --gpus-per-task=1: each task sees only its own
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    with pytest.raises(UserError, match="no CUDA GPU is visible"):
        cuda_index(0)


def _popen_logged(cmd, env, log):
    out = open(log, "w")
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT), out


@pytest.mark.slow
def test_srun_without_torchrun_trains_as_torchrun_does_and_scoring_outlasts_the_group_timeout(toy_root, ddp_run,
                                                                                              tmp_path):
    """Two processes given srun's variables by the test (no torchrun) train an epoch and score it;
    COCOeval is made 28 s longer than the 20 s group timeout: every rank scores, none waits in a
    collective meanwhile, so the run ends well, with the same losses and AP as torchrun's."""
    by_srun = tmp_path / "srun"
    port = free_port()
    procs = []
    for rank in range(2):
        env = {**os.environ, **srun_env(rank, 2, nodes="localhost"), "MASTER_PORT": str(port), "SCORING_DELAY": "28",
               "OMP_NUM_THREADS": "1"}
        cmd = train_cmd(toy_root, by_srun, *DDP_ARGS, "--dist-timeout", "20", eval_every=1)[2:]
        procs.append(_popen_logged([PY, "tests/slow_scoring.py", *cmd], env, tmp_path / f"rank{rank}.log"))
    for proc, out in procs:
        proc.wait(timeout=600)
        out.close()
    logs = [(tmp_path / f"rank{rank}.log").read_text() for rank in range(2)]
    assert [p.returncode for p, _ in procs] == [0, 0], logs
    assert "SLURM job step: 2 processes, rank 0 at localhost" in logs[0]
    assert all("slow COCOeval: 28 s more" in log for log in logs)  # every rank scored, slowly
    a, b = ckpt(ddp_run)["history"], ckpt(by_srun)["history"]  # torchrun's, the same flags
    assert len(a) == len(b) == 1 and "AP" in b[0]
    assert b[0]["loss"] == pytest.approx(a[0]["loss"], rel=1e-6) and b[0]["AP"] == pytest.approx(a[0]["AP"], abs=1e-9)


SRUN = """#!/bin/bash
# srun as SLURM's: one task here; SIGUSR1 passed on to it, SIGTERM answered by killing it
while [[ "$1" == --* ]]; do shift; done
"$@" &
task=$!
trap 'kill -USR1 $task' USR1
trap 'kill -KILL $task' TERM
while :; do
    wait $task
    status=$?
    kill -0 $task 2>/dev/null || exit $status
done
"""


def _stubs(folder):
    """srun runs its command here as one task; scontrol notes what it is asked."""
    folder.mkdir()
    (folder / "srun").write_text(SRUN)
    (folder / "scontrol").write_text(f'#!/bin/bash\necho "$@" >> {folder}/scontrol.calls\n')
    for name in ("srun", "scontrol"):
        (folder / name).chmod((folder / name).stat().st_mode | stat.S_IEXEC)
    return folder


@pytest.mark.slow
def test_sbatch_script_saves_on_the_time_limit_signal_requeues_and_the_requeued_job_resumes(toy_root, tmp_path):
    stubs = _stubs(tmp_path / "bin")
    env = {**os.environ, "PATH": f"{stubs}:{os.environ['PATH']}", "SLURM_JOB_ID": "77", "SLURM_SUBMIT_DIR": ROOT,
           "PYTHON": PY, "OMP_NUM_THREADS": "1"}
    save, straight = tmp_path / "save", tmp_path / "straight"
    cmd = train_cmd(toy_root, save, epochs=3)[2:]  # 3 iterations an epoch
    job, out = _popen_logged(["bash", SBATCH, *cmd], env, tmp_path / "job1.log")
    wait_for(tmp_path / "job1.log", "epoch 1/3")  # training under way, the stop handler in place
    job.send_signal(signal.SIGUSR1)  # SLURM's --signal=B:USR1@300, to the batch script
    job.wait(timeout=600)
    out.close()
    log = (tmp_path / "job1.log").read_text()
    assert job.returncode == 0, log
    assert "time limit near: saving, then requeueing job 77" in log
    assert (stubs / "scontrol.calls").read_text() == "requeue 77\n"
    stopped = ckpt(save)
    assert stopped["epoch"] < 3, log  # saved before the end
    again = subprocess.run(["bash", SBATCH, *cmd], cwd=ROOT, env={**env, "SLURM_RESTART_COUNT": "1"},
                           capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and "Resuming from" in again.stdout, again.stdout + again.stderr
    assert (stubs / "scontrol.calls").read_text() == "requeue 77\n"  # no signal, no second requeue
    assert run(train_cmd(toy_root, straight, epochs=3)).returncode == 0
    a, b = ckpt(straight), ckpt(save)
    assert b["epoch"] == 3 and a["iteration"] == b["iteration"]
    for name, w in a["model"].items():
        assert torch.equal(w, b["model"][name]), name


@pytest.mark.slow
def test_sigterm_to_the_sbatch_script_saves_through_srun_and_ends_the_job_without_a_requeue(toy_root, tmp_path):
    """srun kills its tasks on SIGTERM: the script passes SIGUSR1 on instead, so the run saves."""
    stubs = _stubs(tmp_path / "bin")
    env = {**os.environ, "PATH": f"{stubs}:{os.environ['PATH']}", "SLURM_JOB_ID": "78", "SLURM_SUBMIT_DIR": ROOT,
           "PYTHON": PY, "OMP_NUM_THREADS": "1"}
    save = tmp_path / "save"
    job, out = _popen_logged(["bash", SBATCH, *train_cmd(toy_root, save, epochs=3)[2:]], env, tmp_path / "job.log")
    wait_for(tmp_path / "job.log", "epoch 1/3")
    job.send_signal(signal.SIGTERM)  # scancel --batch --signal=TERM
    job.wait(timeout=600)
    out.close()
    log = (tmp_path / "job.log").read_text()
    assert job.returncode == 0 and "SIGTERM: saving and stopping" in log, log
    assert ckpt(save)["epoch"] < 3 and not (stubs / "scontrol.calls").exists()


@pytest.mark.slow
def test_sbatch_script_refuses_outside_a_job_or_the_repository(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    outside = subprocess.run(["bash", SBATCH], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert outside.returncode == 1 and outside.stderr.strip().splitlines() == [
        "train.sbatch: error: not inside a SLURM job: submit it with sbatch"]
    elsewhere = subprocess.run(["bash", SBATCH], cwd=ROOT, env={**env, "SLURM_JOB_ID": "1",
                                                               "SLURM_SUBMIT_DIR": str(tmp_path)},
                               capture_output=True, text=True, timeout=60)
    assert elsewhere.returncode == 1 and "submit the job from the repository's root" in elsewhere.stderr


def test_sbatch_script_passes_bash_n_and_shellcheck():
    assert subprocess.run(["bash", "-n", SBATCH]).returncode == 0
    shellcheck = os.path.join(os.path.dirname(sys.executable), "shellcheck")
    result = subprocess.run([shellcheck, SBATCH], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout
