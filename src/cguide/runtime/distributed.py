"""Distributed sampling for the sweep (torch.distributed; gloo on CPU, NCCL on GPUs).

Each rank draws a contiguous share of every call's sample indices. A sample depends on its own seed
alone (counter-based noise), so the shares gathered in rank order ARE the single-process draw, and
rank 0 measures them with the single-process metric code: the metrics need all samples at once (FID
statistics, KID subsets), so gathering the samples is simpler and exactly as accurate as syncing
partial statistics. Only rank 0 writes results and logs.

A process group comes from torchrun's environment (RANK, WORLD_SIZE, ...), from a multi-task submitit
job (SLURM or local, tasks_per_node > 1), or from ``spawn`` (``distributed.devices=N``)."""

from __future__ import annotations

import os
import pickle
import socket
from datetime import timedelta
from typing import Any, Callable

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

# Bad input: reported as one line by every rank (cguide.cli turns these into `error: ...`, exit 2).
ERRORS = (ValueError, FileNotFoundError, FloatingPointError)


def rank_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main() -> bool:
    return rank_world()[0] == 0


def _submitit_tasks() -> int:
    if not os.environ.get("SUBMITIT_EXECUTOR"):
        return 1
    from submitit import JobEnvironment

    return JobEnvironment().num_tasks


def init_from_env(timeout_min: float = 30) -> bool:
    """Join the process group the environment describes; False when this is a single process."""
    if dist.is_initialized():
        return True
    if "WORLD_SIZE" not in os.environ and _submitit_tasks() > 1:
        from submitit.helpers import TorchDistributedEnvironment

        # The job's tasks define the group. A MASTER_PORT inherited from the launching shell (another job,
        # a Lightning ddp_spawn run) is dropped: submitit would make every job of a sweep on one node listen
        # on it; without it each job gets its own port, derived from its job id.
        for key in ("MASTER_ADDR", "MASTER_PORT", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
            os.environ.pop(key, None)
        TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    cuda = torch.cuda.is_available()
    if cuda:  # one GPU per rank: device "cuda" (and "auto") then means this rank's GPU
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())
    dist.init_process_group("nccl" if cuda else "gloo", timeout=timedelta(minutes=timeout_min))
    return True


def shard(n: int) -> slice:
    """This rank's contiguous share of n indices (the first n % world ranks get one more)."""
    rank, world = rank_world()
    base, extra = divmod(n, world)
    start = rank * base + min(rank, extra)
    return slice(start, start + base + (rank < extra))


def gather_rows(part: torch.Tensor, n: int) -> torch.Tensor:
    """Concatenate every rank's share (rank order) on every rank; shares may differ in length by one."""
    rank, world = rank_world()
    if world == 1:
        return part
    dev = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    longest = -(-n // world)
    padded = torch.zeros((longest, *part.shape[1:]), dtype=part.dtype, device=dev)
    padded[:len(part)] = part.to(dev)
    bufs = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(bufs, padded)
    base, extra = divmod(n, world)
    return torch.cat([b[:base + (r < extra)] for r, b in enumerate(bufs)]).cpu()


def main_then_share(fn: Callable, *args) -> Any:
    """Run fn on rank 0 only and hand its result, or its (one-line) error, to every rank."""
    rank, world = rank_world()
    if world == 1:
        return fn(*args)
    box: list = [None]
    if rank == 0:
        try:
            box = [(None, fn(*args))]
        except ERRORS as e:
            box = [(e, None)]
    dist.broadcast_object_list(box, src=0)
    err, value = box[0]
    if err is not None:
        raise err
    return value


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank: int, world: int, port: int, queue, fn: Callable, args: tuple) -> None:
    """One spawned rank: join the group, run fn, report (rank, error, result) on the queue. A bad-input
    error is reported and re-raised, so torch's spawn stops the other ranks (they may wait in a collective)."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world))
    try:
        init_from_env()
        # by value: a tensor sent as-is travels as a shared-memory handle that dies with this process
        queue.put((rank, None, pickle.dumps(fn(*args))))
    except ERRORS as e:
        queue.put((rank, e, None))
        raise
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def spawn(fn: Callable, nprocs: int, *args) -> Any:
    """Run fn(*args) in nprocs fresh processes forming one process group on this machine
    (torch.multiprocessing.spawn); returns rank 0's result, or raises the first bad-input error a rank
    reported as is (else spawn's error, with the failing rank's traceback)."""
    queue = mp.get_context("spawn").SimpleQueue()
    failure = None
    try:
        mp.spawn(_entry, args=(nprocs, free_port(), queue, fn, args), nprocs=nprocs, join=True)
    except (mp.ProcessRaisedException, mp.ProcessExitedException) as e:
        failure = e
    results, errors = {}, []
    while not queue.empty():
        rank, err, value = queue.get()
        results[rank] = None if value is None else pickle.loads(value)
        if err is not None:
            errors.append(err)
    if errors:
        raise errors[0]
    if failure is not None:
        raise RuntimeError(f"a spawned rank failed: {failure}") from None
    return results[0]
