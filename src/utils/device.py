"""Running a model on a device: autocast and the input's memory format, shared by training,
evaluation and the detector."""
import torch


def autocast(device: torch.device, amp: bool):
    """float16 autocast on CUDA, bfloat16 on the CPU; a no-op without ``amp``."""
    dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    return torch.autocast(device.type, dtype=dtype, enabled=amp)


def to_input(images, device, channels_last=False):
    """The batch on ``device``, in the memory format of the model (NHWC is faster for AMP convs)."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return images.to(device, non_blocking=True, memory_format=fmt)
