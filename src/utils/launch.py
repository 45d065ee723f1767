"""Who this process is in a run of many: from torchrun's environment, or from SLURM's when a
job step starts the processes itself (``srun python train.py ...``, no torchrun)."""
import os
from dataclasses import dataclass


@dataclass(frozen=True)
class Launch:
    """This process's place in the run, and where the ranks meet (rank 0's host and port)."""
    rank: int
    local_rank: int
    world_size: int
    master_addr: str
    master_port: int
    launcher: str  # "torchrun" or "slurm"

    def export(self, env=os.environ):
        """Write the variables ``torch.distributed``'s ``env://`` rendezvous reads."""
        env.update(RANK=str(self.rank), LOCAL_RANK=str(self.local_rank), WORLD_SIZE=str(self.world_size),
                   MASTER_ADDR=self.master_addr, MASTER_PORT=str(self.master_port))


TORCHRUN = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def find_launch(env=os.environ) -> Launch | None:
    """torchrun's (or ``torch.distributed.launch``'s) variables when they are set, else SLURM's
    of a job step (``srun`` sets ``SLURM_STEP_NUM_TASKS``; a batch script's own shell, which
    sbatch runs once, does not, so a ``python train.py`` there is one process, not rank 0 of
    ``--ntasks``); None for a single process.

    Under SLURM: rank ``SLURM_PROCID``, world size ``SLURM_STEP_NUM_TASKS``, local rank
    ``SLURM_LOCALID``; rank 0's host is the first of ``SLURM_STEP_NODELIST`` (``MASTER_ADDR``
    when set) and the port ``MASTER_PORT`` or one derived from the job id (:func:`job_port`).
    A step of one task is a single process.
    """
    if all(k in env for k in TORCHRUN):
        return Launch(int(env["RANK"]), int(env.get("LOCAL_RANK", 0)), int(env["WORLD_SIZE"]), env["MASTER_ADDR"],
                      int(env["MASTER_PORT"]), "torchrun")
    if "SLURM_STEP_NUM_TASKS" not in env or "SLURM_PROCID" not in env or int(env["SLURM_STEP_NUM_TASKS"]) < 2:
        return None
    nodes = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST") or "localhost"
    return Launch(rank=int(env["SLURM_PROCID"]), local_rank=int(env.get("SLURM_LOCALID", 0)),
                  world_size=int(env["SLURM_STEP_NUM_TASKS"]),
                  master_addr=env.get("MASTER_ADDR") or expand_hostlist(nodes)[0],
                  master_port=int(env.get("MASTER_PORT") or job_port(env.get("SLURM_JOB_ID", "0"))),
                  launcher="slurm")


def job_port(job_id: str) -> int:
    """A port in 15000..24999 from the job id: the same on every node of a job, different for
    jobs that share a node most of the time, and below Linux's ephemeral range (32768 on)."""
    digits = "".join(c for c in job_id if c.isdigit()) or "0"
    return 15000 + int(digits) % 10000


def expand_hostlist(text: str) -> list[str]:
    """SLURM's compressed host list, expanded: ``"gpu[01-03,07],login1"`` -> gpu01, gpu02, gpu03,
    gpu07, login1 (zero padding kept; several bracket groups in one name multiply)."""
    hosts, depth, start = [], 0, 0
    for i, c in enumerate(text + ","):
        depth += (c == "[") - (c == "]")
        if c == "," and depth == 0:
            if text[start:i]:
                hosts.extend(_expand_name(text[start:i]))
            start = i + 1
    return hosts


def _expand_name(name: str) -> list[str]:
    """One name of a host list: its first bracket group expanded, and the rest recursively."""
    open_at = name.find("[")
    if open_at < 0:
        return [name]
    close_at = name.index("]", open_at)
    tails = _expand_name(name[close_at + 1:])
    return [name[:open_at] + value + tail for value in _expand_ranges(name[open_at + 1:close_at]) for tail in tails]


def _expand_ranges(body: str) -> list[str]:
    """``"01-03,07"`` -> 01, 02, 03, 07: each range padded to the width of its first number."""
    values = []
    for part in body.split(","):
        low, _, high = part.partition("-")
        width = len(low)
        values.extend(str(n).zfill(width) for n in range(int(low), int(high or low) + 1))
    return values
