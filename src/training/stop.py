"""Stopping training cleanly on SIGINT (Ctrl-C), SIGTERM (a cluster's preemption) or SIGUSR1
(SLURM's warning before a job's time limit: ``tools/train.sbatch``)."""
import signal

import torch

from src.utils.distributed import all_reduce_sum, is_distributed

STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGUSR1") if hasattr(signal, name))


class GracefulStop:
    """After the first SIGINT, SIGTERM or SIGUSR1, :meth:`should_stop` turns true at a step boundary, so
    the step in flight finishes and a checkpoint can be written. A second Ctrl-C stops at once.

    In a process group the ranks agree (every ``sync_every`` steps) so that all stop together.
    """

    def __init__(self, sync_every: int = 10):
        self.requested = False
        self.sync_every = sync_every
        self._previous = {}

    def install(self) -> "GracefulStop":
        for sig in STOP_SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True

    def should_stop(self, step: int) -> bool:
        """Checked after each training step; the ranks agree every ``sync_every`` steps."""
        if is_distributed() and step % self.sync_every:
            return False
        return self.agreed()

    def agreed(self) -> bool:
        """Whether any rank was asked to stop (a collective call in a process group)."""
        if not is_distributed():
            return self.requested
        return all_reduce_sum(torch.tensor([float(self.requested)])).item() > 0

    def uninstall(self):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
