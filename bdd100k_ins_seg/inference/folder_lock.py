"""One test.py run at a time in an output folder.

A run that writes into ``--format-dir OUT`` holds an exclusive lock on
``OUT/.lock`` (``flock``) from its checks to its exit; the file names the
process. The kernel releases the lock when the process ends, however it
ends (a crash, ``kill -9``): a lock file left behind by a dead run holds
nothing. Another run into the folder is refused, naming the process that
holds it, before it builds its model. The ranks of one job share the lock:
rank 0 takes it, and a rank that finds its own job's lock goes on.

Where ``fcntl`` is missing (not POSIX) nothing is locked.
"""
import atexit
import json
import os
import os.path as osp
import socket
import sys
import time
from typing import Dict, Optional

from bdd100k_ins_seg.cli import InputError

try:
    import fcntl
except ImportError:  # not POSIX: no locking
    fcntl = None

LOCK_FILE = '.lock'
#: out_dir -> the open lock file of this process.
_HELD: Dict[str, object] = {}


class FolderInUseError(InputError):
    """Another process writes into the output folder."""

    def __init__(self, out_dir: str, holder: Dict) -> None:
        super().__init__(f'output folder {out_dir}',
                         f'is in use by {describe(holder)}: wait for it to '
                         'end, or write into another --format-dir')
        self.holder = holder


def _rank() -> int:
    return int(os.environ.get('RANK', os.environ.get('SLURM_PROCID', '0')))


def _job() -> str:
    """What the ranks of one job share, and two jobs running at once do
    not (their rendezvous address, their Slurm job step); empty for a
    process started alone."""
    keys = ('TORCHELASTIC_RUN_ID', 'MASTER_ADDR', 'MASTER_PORT',
            'SLURM_JOB_ID', 'SLURM_STEP_ID')
    return ','.join(f'{k}={os.environ[k]}' for k in keys if k in os.environ)


def describe(holder: Dict) -> str:
    """``process 123 (test.py ...) on host x since 12:00:00``."""
    text = f'process {holder.get("pid", "?")}'
    if holder.get('command'):
        text += f' ({holder["command"]})'
    if holder.get('host') and holder['host'] != socket.gethostname():
        text += f' on {holder["host"]}'
    if holder.get('since'):
        text += f' since {holder["since"]}'
    return text


def holder(out_dir: str) -> Optional[Dict]:
    """What the lock file of ``out_dir`` says of the live process holding
    it, or None when no process holds it (the file is only read)."""
    path = osp.join(out_dir, LOCK_FILE)
    if fcntl is None or not osp.isfile(path):
        return None
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            pass  # held: read who holds it
        else:
            fcntl.flock(fd, fcntl.LOCK_UN)
            return None
        try:
            with open(path, encoding='utf-8') as f:
                info = json.load(f)
        except (OSError, ValueError):
            info = {}
        return info if isinstance(info, dict) else {}
    finally:
        os.close(fd)


def check_not_in_use(out_dir: str) -> None:
    """Raise :class:`FolderInUseError` if another run holds ``out_dir``
    (this job's own lock, or this process's, is no objection)."""
    if out_dir in _HELD:
        return
    info = holder(out_dir)
    for _ in range(20):  # a lock taken a moment ago: its file is written
        if info is None or 'pid' in info:
            break
        time.sleep(0.1)
        info = holder(out_dir)
    if info is not None and not (info.get('job') and
                                 info.get('job') == _job()):
        raise FolderInUseError(out_dir, info)


def lock(out_dir: str) -> None:
    """Rank 0 takes the lock of ``out_dir`` (made if missing) until this
    process ends (the other ranks: :func:`check_not_in_use`). Raises
    :class:`FolderInUseError` if another run holds it."""
    if fcntl is None or out_dir in _HELD or _rank() != 0:
        return
    os.makedirs(out_dir, exist_ok=True)
    path = osp.join(out_dir, LOCK_FILE)
    f = open(path, 'a+', encoding='utf-8')
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.close()
        raise FolderInUseError(out_dir, holder(out_dir) or {}) from None
    command = ' '.join([osp.basename(sys.argv[0])] + sys.argv[1:]) if (
        sys.argv and sys.argv[0]) else ''
    if len(command) > 80:
        command = command[:77] + '...'
    info = dict(pid=os.getpid(), host=socket.gethostname(), command=command,
                since=time.strftime('%Y-%m-%d %H:%M:%S'), job=_job())
    f.seek(0)
    f.truncate()
    f.write(json.dumps(info))
    f.flush()
    _HELD[out_dir] = f
    atexit.register(unlock, out_dir)


def unlock(out_dir: str) -> None:
    """Remove the lock file and release the lock (at exit)."""
    f = _HELD.pop(out_dir, None)
    if f is None:
        return
    try:
        os.remove(osp.join(out_dir, LOCK_FILE))
    except OSError:
        pass
    f.close()


__all__ = ['FolderInUseError', 'LOCK_FILE', 'check_not_in_use', 'describe',
           'holder', 'lock', 'unlock']
