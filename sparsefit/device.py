"""Device and precision choice, shared by every backend command (`--device`, `--dtype`).

`auto` means CUDA when torch sees a GPU, else the CPU. Asking for what the machine cannot do is a one-line
SparseFitError, never a CUDA traceback halfway through a run.
"""

from __future__ import annotations

import torch

from sparsefit.errors import SparseFitError

DEVICE_CHOICES = "auto, cpu, cuda or cuda:N"
DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}


def resolve_device(name: str | None = "auto") -> torch.device:
    """'auto' | 'cpu' | 'cuda' | 'cuda:N' -> a torch.device that exists on this machine."""
    name = (name or "auto").strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise SparseFitError(f"unknown device {name!r}; use {DEVICE_CHOICES}", field="device") from err
    if device.type == "cpu":
        return device
    if device.type != "cuda":
        raise SparseFitError(f"device {name!r} is not supported; use {DEVICE_CHOICES}", field="device")
    if not torch.cuda.is_available():
        raise SparseFitError(f"--device {name}: this torch sees no CUDA GPU (torch {torch.__version__}, "
                             f"CUDA build: {torch.version.cuda or 'no'}); use --device cpu or auto",
                             field="device")
    if device.index is not None and device.index >= torch.cuda.device_count():
        raise SparseFitError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) visible",
                             field="device")
    return device


def resolve_dtype(name: str | None, device: torch.device) -> torch.dtype:
    """'float32' | 'bfloat16' -> torch dtype, refusing bf16 where the device cannot compute in it."""
    key = (name or "float32").strip().lower()
    if key not in DTYPES:
        raise SparseFitError(f"unknown dtype {name!r}; use float32 or bfloat16", field="dtype")
    dtype = DTYPES[key]
    if dtype == torch.bfloat16 and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise SparseFitError(f"--dtype bfloat16: {torch.cuda.get_device_name(device)} cannot compute in "
                             "bfloat16; use --dtype float32", field="dtype")
    return dtype
