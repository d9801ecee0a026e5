"""One download at a time per file: concurrent processes (ranks of one job,
or two jobs) lock a file next to the destination.

The lock is the operating system's (``flock``, through :mod:`filelock`):
the kernel releases it when its holder exits, killed or not. Where the file
system has no locks (some network file systems), a lock file created with
``O_EXCL`` and judged by its owner's pid stands in (the pid-file lock)."""
import errno
import os
import socket
import sys
import tempfile
import time
from pathlib import Path

from bdd100k_ins_seg.zoo.catalogue import LOCK_TIMEOUT_ENV, ZooError


_LOCK_TIMEOUT_S = 300  # a lock with no progress for this long is stale
_LOCK_POLL_S = 0.2
#: What flock answers on a file system without locks (ENOLCK: NFS without
#: its lock service).
_NO_LOCKS = frozenset({errno.ENOSYS, errno.ENOLCK, errno.EOPNOTSUPP,
                       errno.ENOTSUP})
#: {folder: None where flock works there, else why not}, probed once.
_FOLDER_LOCKS = {}


def _remove(path):
    try:
        os.remove(path)
    except FileNotFoundError:
        pass


def _process_alive(pid):
    """Whether process ``pid`` of this host runs (a zombie does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    try:
        with open(f'/proc/{pid}/stat') as f:
            return f.read().rsplit(')', 1)[1].split()[0] != 'Z'
    except (OSError, IndexError):
        return True


def _missing_flock(folder):
    """Why the file system of ``folder`` takes no ``flock`` locks; None
    where it does. Raises OSError where no file can be made there."""
    try:
        import fcntl
    except ImportError:
        return 'no fcntl module'
    with tempfile.TemporaryFile(dir=folder) as probe:
        try:
            fcntl.flock(probe.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno in _NO_LOCKS:
                return f'flock: {e.strerror or e}'
            raise
    return None


class DownloadLock:
    """An exclusive lock on ``<dest>.lock`` while ``dest`` is fetched.

    The lock file holds ``<pid> <host> <time>`` of its owner, and its
    mtime is the owner's heartbeat (:meth:`beat`, called as bytes arrive).
    A waiter prints one message (naming the owner) and polls.

    The lock is the file's ``flock`` (:class:`filelock.UnixFileLock`): a
    killed owner's lock is gone with it. A waiter that sees no progress
    for ``timeout`` seconds (an owner on another host that hangs) moves
    the file aside and locks a new one. The owner removes the file before
    it unlocks it (a waiter that opened it then finds it gone, and opens
    the new one).

    Where the file system takes no ``flock`` (some network file systems;
    said in one line), the lock is the file's existence: created with
    ``O_CREAT | O_EXCL`` (atomic on local and NFS v3+ file systems), and
    broken by a waiter when its owner is a process of this host that no
    longer runs (killed), or when it showed no progress for ``timeout``
    seconds (an owner on another host that died or hangs).

    The lock only saves transfers: correctness never depends on it, since
    every file is written to a temporary name and renamed once checked.

    Args:
        dest (Path): the file to fetch.
        timeout (float, optional): seconds without progress after which a
            lock is stale; default ``$BDD100K_INS_SEG_LOCK_TIMEOUT`` or 300.
    """

    def __init__(self, dest, timeout=None, poll=_LOCK_POLL_S):
        self.dest = Path(dest)
        self.path = self.dest.with_name(self.dest.name + '.lock')
        if timeout is None:
            timeout = float(os.environ.get(LOCK_TIMEOUT_ENV)
                            or _LOCK_TIMEOUT_S)
        self.timeout = timeout
        self.poll = poll
        self._token = None
        self._last_beat = 0.0
        self._flock = None  # the filelock held
        self._fd = None  # its descriptor

    def _owner(self):
        """(text, pid, host, mtime) of the lock file, None if it is gone."""
        try:
            text = self.path.read_text(errors='replace')
            mtime = self.path.stat().st_mtime
        except FileNotFoundError:
            return None
        fields = text.split()
        pid = int(fields[0]) if fields and fields[0].isdigit() else None
        host = fields[1] if len(fields) > 1 else None
        return text, pid, host, mtime

    def _stale_reason(self, owner):
        _, pid, host, mtime = owner
        if (pid is not None and host == socket.gethostname()
                and not _process_alive(pid)):
            return f'its process {pid} is gone'
        idle = time.time() - mtime
        if idle > self.timeout:
            return f'no progress for {idle:.0f} s'
        return None

    def _break(self, owner, reason):
        # Only the lock that was judged stale: it may have changed hands.
        current = self._owner()
        if current is None or current[0] != owner[0]:
            return
        grave = self.path.with_name(f'{self.path.name}.{os.getpid()}.stale')
        try:
            os.rename(self.path, grave)
        except FileNotFoundError:
            return
        _remove(grave)
        print(f'{self.dest.name}: removed the stale lock {self.path} '
              f'({reason})', file=sys.stderr, flush=True)

    def _announce(self, owner):
        who = (f'process {owner[1]} on {owner[2]}'
               if owner[1] is not None else 'another process')
        print(f'{self.dest.name}: waiting for {who}, which is '
              f'downloading it (lock {self.path})', file=sys.stderr,
              flush=True)

    def _cannot_lock(self, e):
        return ZooError(f'cannot create the download lock {self.path}: '
                        f'{e.strerror or e}')

    def acquire(self):
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:  # a file in the way, read-only, ...
            raise ZooError(f'cannot create the cache folder '
                           f'{self.path.parent}: {e.strerror or e}') from None
        folder = str(self.path.parent)
        if folder not in _FOLDER_LOCKS:
            try:
                _FOLDER_LOCKS[folder] = _missing_flock(folder)
            except OSError as e:  # read-only cache, no space, ...
                raise self._cannot_lock(e) from None
            if _FOLDER_LOCKS[folder] is not None:
                print(f'{folder}: the file system takes no file locks '
                      f'({_FOLDER_LOCKS[folder]}); downloads there are '
                      'locked by lock files that hold their owner\'s pid',
                      file=sys.stderr, flush=True)
        if _FOLDER_LOCKS[folder] is None:
            return self._acquire_flock()
        return self._acquire_pid_file()

    def _claim(self, fd):
        """filelock's ``on_acquired``: write the owner into the lock."""
        token = self._new_token()
        os.ftruncate(fd, 0)
        os.pwrite(fd, token.encode(), 0)
        self._fd, self._token = fd, token
        self._last_beat = time.monotonic()

    def _acquire_flock(self):
        import filelock
        lock = filelock.UnixFileLock(self.path, fallback_to_soft=False,
                                     on_acquired=self._claim)
        announced = False
        seen, since = None, time.monotonic()
        while True:
            try:
                lock.acquire(blocking=False)
            except filelock.Timeout:
                pass
            except OSError as e:  # read-only cache, no space, ...
                self._fd = self._token = None
                raise self._cannot_lock(e) from None
            else:
                self._flock = lock
                return self
            owner = self._owner()
            if owner is None:
                continue  # released meanwhile
            # Progress is judged on what this process saw, from when it
            # started waiting (not on the clock of another host).
            if seen != (owner[0], owner[3]):
                seen, since = (owner[0], owner[3]), time.monotonic()
            idle = time.monotonic() - since
            if idle > self.timeout:
                self._break(owner, f'no progress for {idle:.0f} s')
                continue
            if not announced and (owner[1] is not None
                                  or idle >= self.poll):
                # (the owner named once it wrote itself in)
                self._announce(owner)
                announced = True
            time.sleep(self.poll)

    def _new_token(self):
        return (f'{os.getpid()} {socket.gethostname()} '
                f'{time.time():.6f}\n')

    def _acquire_pid_file(self):
        announced = False
        while True:
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY,
                             0o644)
            except FileExistsError:
                owner = self._owner()
                if owner is None:
                    continue  # released meanwhile
                reason = self._stale_reason(owner)
                if reason:
                    self._break(owner, reason)
                    continue
                if not announced:
                    self._announce(owner)
                    announced = True
                time.sleep(self.poll)
                continue
            except OSError as e:  # read-only cache, no space, ...
                raise self._cannot_lock(e) from None
            token = self._new_token()
            with os.fdopen(fd, 'w') as f:
                f.write(token)
            self._token = token
            self._last_beat = time.monotonic()
            return self

    def beat(self):
        """Mark progress (at most once a second)."""
        now = time.monotonic()
        if self._token is not None and now - self._last_beat >= 1.0:
            self._last_beat = now
            try:
                if self._fd is not None and os.utime in os.supports_fd:
                    os.utime(self._fd)  # the file locked, even moved aside
                else:
                    os.utime(self.path)
            except FileNotFoundError:
                pass  # broken by a waiter; the rename stays safe

    def release(self):
        if self._flock is not None:
            lock, fd = self._flock, self._fd
            self._flock = self._fd = self._token = None
            try:
                # Removed while locked, unless a waiter moved it aside.
                if os.path.samestat(os.stat(self.path), os.fstat(fd)):
                    os.remove(self.path)
            except OSError:
                pass  # gone already; or kept, which is harmless
            finally:
                lock.release()
            return
        if self._token is None:
            return
        owner = self._owner()
        if owner is not None and owner[0] == self._token:
            _remove(self.path)
        self._token = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()
