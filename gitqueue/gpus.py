"""GPU slots: which GPUs a worker owns, and which of them each of its runs holds.

A worker started with ``--gpus 0,1,2,3`` (or ``--gpus all``) owns those GPUs for as long as it
runs; each run takes as many as its task's ``gpus:`` asks (1 when it says nothing) and gives them
back when it ends, and its command sees only its own through ``CUDA_VISIBLE_DEVICES``, the name
CUDA, Slurm's gres and task-spooler use. A worker without ``--gpus`` leaves its commands'
environment as it found it and ignores ``gpus:``.

The ids are kept as written, because they go to ``CUDA_VISIBLE_DEVICES`` unchanged: indices
(``0``), GPU UUIDs (``GPU-5b3c...``) and MIG instances (``MIG-...``) all work there.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import threading
from collections.abc import Iterable, Mapping, Sequence

from gitqueue.errors import GpuError
from gitqueue.task import Task

GPU_ENV = "CUDA_VISIBLE_DEVICES"
NVIDIA_SMI_TIMEOUT = 30.0  # seconds: nvidia-smi can hang on a GPU that fell off the bus
_BY_HAND = "give the GPU ids by hand instead, e.g. --gpus 0,1,2,3"
_GPU_LINE = re.compile(r"GPU (\d+): .*\(UUID: (GPU-[^)\s]+)\)")
_MIG_LINE = re.compile(r"\s+MIG .*\(UUID: (MIG-[^)\s]+)\)")


def parse_gpus(value: str, *, environ: Mapping[str, str] | None = None) -> tuple[str, ...]:
    """The GPU ids a ``--gpus`` value names, in its order.

    ``0,1,2,3`` (or UUIDs, MIG ids) is taken as written; an empty item or an id named twice is
    refused, since two runs would then share a GPU. ``all`` is every GPU this process may use:
    those in ``CUDA_VISIBLE_DEVICES`` when it is set (Slurm sets it to a job's allocation), else
    every GPU ``nvidia-smi -L`` lists, a GPU split into MIG instances counting as its instances.
    """
    text = value.strip()
    if text.lower() == "all":
        return all_gpus(environ=os.environ if environ is None else environ)
    return _ids(text, source=f"--gpus {value!r}")


def _ids(text: str, *, source: str) -> tuple[str, ...]:
    return _checked([item.strip() for item in text.split(",")], source=source)


def _checked(ids: Sequence[str], *, source: str) -> tuple[str, ...]:
    """``ids`` if each is one usable GPU id, named once; else a :class:`GpuError` from ``source``."""
    if any(not item for item in ids):
        raise GpuError(f"{source}: an empty GPU id; write ids separated by commas, e.g. --gpus 0,1,2,3")
    seen: set[str] = set()
    for item in ids:
        if any(c.isspace() or c == "," for c in item):
            raise GpuError(f"{source}: GPU id {item!r} holds a space or comma; write ids like --gpus 0,1")
        if item in seen:
            raise GpuError(f"{source}: GPU {item} is named twice; each GPU goes to one slot at a time")
        seen.add(item)
    return tuple(ids)


def all_gpus(*, environ: Mapping[str, str]) -> tuple[str, ...]:
    """What ``--gpus all`` means here (see :func:`parse_gpus`)."""
    visible = environ.get(GPU_ENV)
    if visible is not None:
        if visible.strip() in ("", "-1", "NoDevFiles"):  # what CUDA and Slurm write for "no GPU"
            raise GpuError(f"--gpus all: {GPU_ENV}={visible!r} leaves this process no GPU; {_BY_HAND}")
        return _ids(visible.strip(), source=f"--gpus all ({GPU_ENV}={visible!r})")
    return nvidia_smi_gpus(path=environ.get("PATH"))


def nvidia_smi_gpus(*, path: str | None = None, timeout: float = NVIDIA_SMI_TIMEOUT) -> tuple[str, ...]:
    """The GPUs ``nvidia-smi -L`` lists, found on ``path`` (a PATH value; None: this process's);
    an nvidia-smi that gives no answer in ``timeout`` seconds is stopped and reported."""
    program = shutil.which("nvidia-smi", path=path)
    if program is None:
        raise GpuError(f"--gpus all: nvidia-smi is not on PATH, so the GPUs cannot be listed; {_BY_HAND}")
    try:
        done = subprocess.run([program, "-L"], capture_output=True, text=True, errors="replace", timeout=timeout)
    except subprocess.TimeoutExpired:
        raise GpuError(f"--gpus all: nvidia-smi -L gave no answer in {timeout:g}s; {_BY_HAND}") from None
    except OSError as exc:
        raise GpuError(f"--gpus all: nvidia-smi could not be started ({exc.strerror}); {_BY_HAND}") from None
    said = (done.stderr.strip() or done.stdout.strip()).splitlines()
    tail = f": {said[-1][:200]}" if said else ""
    if done.returncode != 0:
        raise GpuError(f"--gpus all: nvidia-smi -L failed (exit status {done.returncode}){tail}; {_BY_HAND}")
    ids = parse_nvidia_smi(done.stdout)
    if not ids:
        raise GpuError(f"--gpus all: nvidia-smi -L lists no GPU{tail}; {_BY_HAND}")
    return ids


def parse_nvidia_smi(listing: str) -> tuple[str, ...]:
    """GPU ids from ``nvidia-smi -L`` output: a GPU's index (``GPU 0: NAME (UUID: GPU-...)``),
    or, for a GPU split into MIG instances, the UUID of each instance listed under it (CUDA
    addresses an instance only by its UUID). Lines of any other shape are passed over."""
    ids: list[str] = []
    split: set[str] = set()  # GPUs whose MIG instances stand in for them
    gpu = None
    for line in listing.splitlines():
        if match := _GPU_LINE.match(line):
            gpu = match.group(1)
            ids.append(gpu)
        elif (match := _MIG_LINE.match(line)) and gpu is not None:
            split.add(gpu)
            ids.append(match.group(1))
    return tuple(i for i in ids if i not in split)


def slot_count(*, gpus: Sequence[str] | None, slots: int | None) -> int:
    """How many runs a worker keeps at once: ``--slots`` if given, else one per GPU (one
    without ``--gpus``). More slots than GPUs is refused: every run on a GPU worker takes at
    least one GPU, so a slot beyond the GPUs could never run anything. Fewer is fine (four
    GPUs, two slots: room for two runs of ``gpus: 2``)."""
    if slots is not None and slots < 1:
        raise GpuError(f"--slots {slots}: a worker needs at least one slot")
    if gpus is None:
        return 1 if slots is None else slots
    if slots is not None and slots > len(gpus):
        owned = ",".join(gpus)
        raise GpuError(
            f"--slots {slots} with {len(gpus)} GPU(s) ({owned}): every run takes at least one GPU, "
            f"so at most {len(gpus)} slots; leave --slots out for one slot per GPU"
        )
    return len(gpus) if slots is None else slots


def gpus_wanted(task: Task, *, pool: GpuPool | None) -> int:
    """How many GPUs a run of ``task`` takes on this worker: its ``gpus:`` (1 if it says
    nothing) on a worker with GPUs, none on a worker without."""
    if pool is None:
        return 0
    return 1 if task.gpus is None else task.gpus


def env_for(ids: Sequence[str] | None) -> dict[str, str]:
    """What to add to a command's environment for a run holding ``ids``.

    None (a worker without ``--gpus``) adds nothing: the command sees what the worker sees. A
    run on a GPU worker sees exactly its own GPUs, none at all if it holds none."""
    if ids is None:
        return {}
    return {GPU_ENV: ",".join(ids)}


class GpuPool:
    """The GPUs one worker owns, and which of them are free; safe to share between threads.

    A take is all or nothing (a run never starts on part of what it asked), and it takes the
    free GPUs that come first in the order the worker was given, so the same state always
    gives the same GPUs."""

    def __init__(self, ids: Iterable[str]) -> None:
        self.owned: tuple[str, ...] = _checked(list(ids), source="GPU pool")
        if not self.owned:
            raise GpuError("GPU pool: a pool needs at least one GPU (a worker without GPUs has no pool)")
        self._free = set(self.owned)
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.owned)

    def __repr__(self) -> str:
        return f"GpuPool(owned={','.join(self.owned)}, free={','.join(self.free)})"

    @property
    def free(self) -> tuple[str, ...]:
        """The GPUs no run holds now, in the worker's order."""
        with self._lock:
            return tuple(i for i in self.owned if i in self._free)

    def fits(self, count: int) -> bool:
        """Whether a run taking ``count`` GPUs could ever start here (never: do not claim it)."""
        return 0 <= count <= len(self.owned)

    def take(self, count: int) -> tuple[str, ...] | None:
        """``count`` free GPUs, now held by the caller; None (nothing taken) if fewer are free."""
        if count < 0:
            raise ValueError(f"cannot take {count} GPUs")
        with self._lock:
            chosen = tuple(i for i in self.owned if i in self._free)[:count]
            if len(chosen) < count:
                return None
            self._free.difference_update(chosen)
            return chosen

    def give(self, ids: Iterable[str]) -> None:
        """Give back GPUs a run held. Giving back one that is not held is a bug in the caller
        (it would let two runs share it later), so it raises and gives back none."""
        back = tuple(ids)
        with self._lock:
            wrong = [i for i in back if i not in self.owned or i in self._free or back.count(i) > 1]
            if wrong:
                raise ValueError(f"GPU {wrong[0]} is not held by a run of this worker (held: {self._held()})")
            self._free.update(back)

    def _held(self) -> str:
        return ",".join(i for i in self.owned if i not in self._free) or "none"


def misfit(task: Task, *, pool: GpuPool | None) -> str | None:
    """Why ``task`` can never run on this worker, in words naming it, or None if it can. A
    worker says this once per task and does not claim it."""
    wanted = gpus_wanted(task, pool=pool)
    if pool is None or pool.fits(wanted):
        return None
    return (
        f"{task.path or task.id} asks for gpus: {wanted}, but this worker has {len(pool)} "
        f"({','.join(pool.owned)}): not claiming it here"
    )
