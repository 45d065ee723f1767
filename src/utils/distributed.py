"""Process-group set-up from torchrun's or SLURM's environment; a no-op in a single process."""
import datetime

import torch
import torch.distributed as dist

from src.utils.errors import UserError
from src.utils.launch import find_launch


def init_distributed(device_name: str, timeout_s: float = 600):
    """Join the process group that torchrun (or torch.distributed.launch) describes, or that a
    SLURM job step does (``srun python train.py``: :func:`~src.utils.launch.find_launch`);
    without them, a single process with no group.

    NCCL on CUDA, gloo on the CPU. A rank that dies makes the others fail within
    ``timeout_s`` instead of hanging. On CUDA, local rank r uses GPU r of those it sees (modulo
    their number: a task bound to one GPU uses it).
    :return: ``(rank, local_rank, world_size, device)``
    """
    launch = find_launch()
    # torchrun's one-process runs join a group too, so they use the same collectives (NCCL,
    # gloo) as runs of many processes
    rank, local_rank, world_size = (launch.rank, launch.local_rank, launch.world_size) if launch else (0, 0, 1)
    device = torch.device(device_name)
    if device.type == "cuda":
        device = torch.device("cuda", cuda_index(local_rank) if launch else (device.index or 0))
        torch.cuda.set_device(device)
    if launch and not dist.is_initialized():
        launch.export()
        if launch.launcher == "slurm" and rank == 0:
            print(f"SLURM job step: {world_size} processes, rank 0 at {launch.master_addr}:{launch.master_port}")
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                timeout=datetime.timedelta(seconds=timeout_s),
                                device_id=device if device.type == "cuda" else None)
    return rank, local_rank, world_size, device


def cuda_index(local_rank: int) -> int:
    """The GPU of local rank ``local_rank``: GPU ``local_rank`` of those this process sees, or
    the one it sees when the launcher bound each process to its own (``srun --gpus-per-task=1``,
    ``--gpu-bind``); two processes on one GPU are refused."""
    count = torch.cuda.device_count()
    if count == 0:
        raise UserError("no CUDA GPU is visible to this process: request GPUs for it, or train with --device cpu")
    if count > 1 and local_rank >= count:
        raise UserError(f"local rank {local_rank} on a node where this process sees {count} GPUs: start as many "
                        "processes per node as GPUs (--nproc_per_node, or --ntasks-per-node with --gpus-per-node)")
    return local_rank % count


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main_process() -> bool:
    return get_rank() == 0


def gather_lists(items: list) -> list:
    """Concatenate every rank's list on every rank (picklable items)."""
    if not is_distributed():
        return items
    gathered = [None] * get_world_size()
    dist.all_gather_object(gathered, items)
    return [x for part in gathered for x in part]


def all_reduce_sum(value: torch.Tensor) -> torch.Tensor:
    """The sum over the ranks of a CPU tensor (gloo) or a tensor on this rank's GPU (NCCL)."""
    if not is_distributed():
        return value
    if dist.get_backend() == "nccl":
        value = value.cuda()
    value = value.clone()
    dist.all_reduce(value)
    return value.cpu()


def broadcast_buffers(module: torch.nn.Module):
    """Give every rank rank 0's buffers (BatchNorm running statistics). DDP syncs them at the
    start of each forward, so after the last training step each rank holds the statistics of
    its own last batch: an evaluation right then would differ from rank to rank, and from the
    checkpoint rank 0 saves."""
    if is_distributed():
        for buffer in module.buffers():
            dist.broadcast(buffer, src=0)


def cleanup():
    if is_distributed():
        dist.destroy_process_group()

