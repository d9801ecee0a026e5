"""CPU threads: processes x threads never more than the cores.

PyTorch starts as many intra-op threads as the machine has cores in every
process. With dataloader workers, several ranks on one machine, or other
jobs, those threads outnumber the cores and each parallel region waits for
a descheduled thread: on a busy 2-core machine a training iteration of the
sample model went from ~1.5 s (1 thread) to 5-14 s (default threads).

:func:`configure_threads` gives each process ``cores // local processes``
threads, less one per dataloader worker (a worker computes with one
thread: PyTorch sets that in workers, mmengine sets OpenCV's to 0).
``OMP_NUM_THREADS`` in the environment overrides it (set it to 1 on a
machine shared with other jobs). The thread count changes the last digits
of the results (summation order): same threads, same numbers.
"""
import os
import time
from typing import Optional, Sequence

#: Overrides the thread count, as it does for OpenMP itself.
ENV = 'OMP_NUM_THREADS'


def available_cores() -> int:
    """The CPU cores this process may run on (its affinity mask)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _cpu_times(stat: str = '/proc/stat') -> Optional[Sequence[int]]:
    """The machine's (busy, total) CPU time in ticks, from ``/proc/stat``'s
    ``cpu`` line, or None where it cannot be read (not Linux).

    Idle and iowait are not busy; time stolen by the hypervisor is (the
    cores were not there for this machine's threads).
    """
    try:
        with open(stat) as f:
            for line in f:
                if line.startswith('cpu '):
                    ticks = [int(v) for v in line.split()[1:]]
                    break
            else:
                return None
    except (OSError, ValueError):
        return None
    # user nice system idle iowait irq softirq steal guest guest_nice;
    # guest time is counted in user/nice already.
    total = sum(ticks[:8])
    idle = sum(ticks[3:5])
    return total - idle, total


def busy_cores(window: float = 1.0,
               stat: str = '/proc/stat') -> Optional[float]:
    """Cores' worth of CPU time the machine's processes use now: the busy
    share of all the machine's CPU time over the next ``window`` seconds,
    times its cores. None where ``/proc/stat`` cannot be read.

    Unlike the load average (a decaying mean over a minute), it does not
    count work that has just ended, such as a setup step of this job.
    """
    first = _cpu_times(stat)
    if first is None:
        return None
    time.sleep(window)
    second = _cpu_times(stat)
    if second is None or second[1] <= first[1]:
        return None
    share = (second[0] - first[0]) / (second[1] - first[1])
    return share * (os.cpu_count() or 1)


def local_processes() -> int:
    """Processes of this job on this machine (torchrun / slurm), or 1."""
    for key in ('LOCAL_WORLD_SIZE', 'SLURM_NTASKS_PER_NODE'):
        value = os.environ.get(key, '')
        if value.isdigit() and int(value) > 0:
            return int(value)
    return 1


def plan_threads(num_workers: int = 0, cores: Optional[int] = None,
                 processes: Optional[int] = None,
                 env: Optional[str] = None) -> int:
    """Intra-op threads for one process (pure: no side effects).

    Args:
        num_workers: dataloader worker processes of this process.
        cores: CPU cores (default: :func:`available_cores`).
        processes: processes of the job on this machine (default:
            :func:`local_processes`).
        env: the ``OMP_NUM_THREADS`` value (default: the environment's).
    """
    env = os.environ.get(ENV) if env is None else env
    if env:
        try:
            threads = int(env)
        except ValueError:
            raise ValueError(f'{ENV}={env!r}: not a whole number') from None
        if threads < 1:
            raise ValueError(f'{ENV}={env!r}: must be at least 1')
        return threads
    cores = available_cores() if cores is None else cores
    processes = local_processes() if processes is None else processes
    return max(1, cores // max(1, processes) - max(0, num_workers))


def configure_threads(cfg=None, num_workers: Optional[int] = None) -> int:
    """Set torch's intra-op threads of this process (see the module doc).

    Args:
        cfg: an mmengine config; its largest ``*_dataloader.num_workers``
            counts as the workers (only one loop runs at a time).
        num_workers: the workers, instead of reading them from ``cfg``.

    Returns:
        the thread count set.
    """
    import torch
    if num_workers is None:
        num_workers = 0
        for key in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
            loader = cfg.get(key) if cfg is not None else None
            if loader:
                num_workers = max(num_workers,
                                  int(loader.get('num_workers', 0) or 0))
    threads = plan_threads(num_workers)
    torch.set_num_threads(threads)
    return threads
