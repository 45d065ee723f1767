"""Exact resume: what a training checkpoint holds so that a run continues as if it never stopped,
and how it is put back.

At an epoch boundary the model, optimizer, schedule and scaler are enough: the next epoch's
shuffle comes from (seed, epoch), each sample's augmentation from (seed, epoch, index)
(:class:`ResumableSampler`), and every process's random state is reseeded from (seed, epoch,
rank). Mid-epoch, a checkpoint also holds, for every rank, the running totals of the epoch in
flight and its random states; the sampler then skips what the rank already saw.

The interface: :func:`resume_point` reads it from a checkpoint, :func:`begin_epoch` puts it back
(or starts an epoch afresh), :func:`capture` takes it when a run stops mid-epoch.
"""
import itertools
import random
from dataclasses import asdict, dataclass

import numpy as np
import torch

from src.checkpoints.schema import TrainingCheckpoint
from src.training.loop import EpochTotals
from src.utils.distributed import gather_lists


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """The augmentation seed of one sample in one epoch: a function of these three alone, so the
    draws differ from epoch to epoch and sample to sample, and do not depend on which worker,
    rank or resumed run loads it."""
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1)[0])


class ResumableSampler(torch.utils.data.DistributedSampler):
    """DistributedSampler that can start an epoch part-way, after ``skip`` of this rank's samples
    (resuming mid-epoch sees the rest of the same shuffled order), and gives each sample its
    augmentation seed: it yields ``(index, sample_seed(seed, epoch, index))``, which
    :class:`~src.data.dataset.CocoDetection` understands.

    Seeding per sample, in the main process, is what makes every epoch and every rank draw
    differently with persistent workers (a worker's own generator is seeded once, when it
    starts) and makes a resume exact with any number of workers."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.skip = 0

    def __iter__(self):
        indices = itertools.islice(super().__iter__(), self.skip, None)
        return ((i, sample_seed(self.seed, self.epoch, i)) for i in indices)

    def __len__(self):
        return super().__len__() - self.skip


def seed_everything(seed: int):
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_states() -> dict:
    """This process's random states, as tensors and plain types (loadable with weights_only)."""
    _, keys, pos, *_ = np.random.get_state()
    return {"torch": torch.get_rng_state(), "numpy": torch.from_numpy(keys.copy()), "numpy_pos": int(pos),
            "python": random.getstate(), "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def set_rng_states(states: dict):
    torch.set_rng_state(states["torch"])
    np.random.set_state(("MT19937", states["numpy"].numpy(), states["numpy_pos"], 0, 0.0))
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    if states["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


@dataclass
class ResumePoint:
    """Where a run continues: ``epoch`` whole epochs done, and for an epoch stopped part-way this
    rank's running totals (``progress``) and random states (``rng``) at the stop."""
    epoch: int = 0
    progress: EpochTotals | None = None
    rng: dict | None = None


def resume_point(ckpt: TrainingCheckpoint | None, rank: int, world_size: int) -> ResumePoint:
    """This rank's resume point in ``ckpt`` (a fresh start for None). A mid-epoch checkpoint made
    with another number of processes continues from rank 0's point on every rank."""
    if ckpt is None:
        return ResumePoint()
    if not ckpt.progress:
        return ResumePoint(ckpt.epoch)
    mine = rank if len(ckpt.progress) == world_size else 0
    return ResumePoint(ckpt.epoch, EpochTotals(**ckpt.progress[mine]), ckpt.rng[mine])


def begin_epoch(point: ResumePoint, epoch: int, sampler: ResumableSampler, batch_size: int, seed: int,
                rank: int) -> EpochTotals | None:
    """Set the sampler and the random states for ``epoch``; resume the epoch ``point`` stopped in.

    :return: the running totals to continue from (None for an epoch from its start)
    """
    sampler.set_epoch(epoch)
    resumed = point.progress is not None and epoch == point.epoch
    sampler.skip = point.progress.batches * batch_size if resumed else 0
    if resumed:
        set_rng_states(point.rng)  # continue the same random streams
        return point.progress
    seed_everything(seed + 1000 * epoch + rank)  # an epoch's streams do not depend on what came before
    return None


def capture(totals: EpochTotals) -> dict:
    """At a mid-epoch stop, every rank's totals and random states (a collective call): the
    checkpoint's ``progress`` and ``rng``, which :func:`resume_point` reads back."""
    return {"progress": gather_lists([asdict(totals)]), "rng": gather_lists([rng_states()])}
