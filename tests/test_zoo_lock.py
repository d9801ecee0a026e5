"""Concurrent downloads of one published file: one transfer, the others
wait and reuse it; a killed owner does not block, a silent owner's lock is
broken. Each with the operating system's locks (flock) and on a file
system without them (the pid-file lock)."""
import errno
import fcntl
import multiprocessing
import os
import socket
import sys
import threading
import time

import pytest

from bdd100k_ins_seg import zoo
from zoo_host import NAME, Host, build_host, leftovers
from test_zoo_artefacts import scenes  # noqa: F401  (module fixture)

FORK = multiprocessing.get_context('fork')  # the test's imports, no restart
NO_LOCKS = ('the file system takes no file locks (flock: Function not '
            'implemented); downloads there are locked by lock files that '
            "hold their owner's pid")


@pytest.fixture(params=['flock', 'pid-file'])
def locks(request, monkeypatch):
    """'flock', or 'pid-file': a file system whose flock fails with ENOSYS
    (as some network file systems do), here and in the forked children."""
    if request.param == 'pid-file':
        def no_flock(fd, operation):
            raise OSError(errno.ENOSYS, os.strerror(errno.ENOSYS))
        monkeypatch.setattr(fcntl, 'flock', no_flock)
    return request.param


def _without_notice(lines, folder, locks):
    """``lines`` less the one-line notice of a file system without locks,
    which is there exactly once on such a file system."""
    notice = f'{folder}: {NO_LOCKS}'
    assert lines.count(notice) == (locks == 'pid-file'), lines
    return [line for line in lines if line != notice]


def _fetch_in_child(kind, log_path, host=None):
    """Child process: fetch, stdout/stderr to log_path, exit 0 or 1.
    ``host``: the host name it gives (as a process in another container
    or on another host, sharing the cache, would)."""
    sys.stdout = sys.stderr = open(log_path, 'w', buffering=1)
    if host is not None:
        socket.gethostname = lambda: host
    try:
        print(zoo.fetch(NAME, kind, progress=False), flush=True)
    except BaseException as e:  # noqa: B902  (reported through the log)
        print(f'failed: {e}', flush=True)
        os._exit(1)
    os._exit(0)


@pytest.fixture
def host(scenes, tmp_path, monkeypatch):  # noqa: F811
    root, scores = scenes
    published = build_host(tmp_path / 'srv', root, scores)
    srv = Host(tmp_path / 'srv')
    monkeypatch.setenv(zoo.MIRROR_ENV, srv.url)
    monkeypatch.setenv(zoo.CACHE_ENV, str(tmp_path / 'cache'))
    yield srv, published
    srv.close()


def _wait_for(condition, seconds=60):
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


@pytest.mark.parametrize('kind', ['weights', 'preds'])
def test_two_processes_one_transfer(host, tmp_path, kind, locks):
    """Answers are held until the second process says it waits (or, with
    no lock, until it asks the server too): then one transfer is all."""
    srv, published = host
    srv.gate = threading.Event()
    logs = [tmp_path / 'a.log', tmp_path / 'b.log']
    first = FORK.Process(target=_fetch_in_child, args=(kind, logs[0]))
    first.start()
    assert _wait_for(lambda: srv.requests), 'first process sent nothing'
    second = FORK.Process(target=_fetch_in_child, args=(kind, logs[1]))
    second.start()

    def second_waits_or_asks():
        text = logs[1].read_text() if logs[1].exists() else ''
        return 'waiting for process' in text or len(srv.requests) > 1
    assert _wait_for(second_waits_or_asks)
    srv.gate.set()
    for process in (first, second):
        process.join(60)
    outputs = [log.read_text() for log in logs]
    assert [first.exitcode, second.exitcode] == [0, 0], outputs
    dest = zoo.artefact_path(zoo.get_entry(NAME), kind)
    lines = [_without_notice(text.splitlines(), dest.parent, locks)
             for text in outputs]
    assert lines[0] == [str(dest)]
    waiting, path = lines[1]
    assert path == str(dest)
    assert waiting == (f'{dest.name}: waiting for process {first.pid} on '
                       f'{socket.gethostname()}, which is downloading it '
                       f'(lock {dest}.lock)')
    ext = zoo.ARTEFACTS[kind][1]
    assert srv.requests.count(f'{NAME}{ext}') == 1
    assert len(srv.requests) == (2 if kind == 'weights' else 1)  # + .md5
    assert dest.read_bytes() == published[kind]
    assert leftovers(tmp_path / 'cache') == []


def test_lock_of_a_killed_process_does_not_block(host, tmp_path, capfd,
                                                 monkeypatch, locks):
    """SIGKILL during the transfer leaves a lock file and a partial file;
    the next fetch does not wait (flock: the kernel released the lock;
    pid-file: it breaks the lock, whose process is gone) and cleans up.

    With flock the owner says it runs elsewhere (another container or
    host sharing the cache, whose processes cannot be looked up from
    here): still no wait."""
    srv, published = host
    srv.gate = threading.Event()
    owner_host = 'other-host' if locks == 'flock' else socket.gethostname()
    # (the pid-file lock would wait for the timeout there: it is bounded)
    monkeypatch.setenv(zoo.LOCK_TIMEOUT_ENV, '40')
    child = FORK.Process(target=_fetch_in_child,
                         args=('scores-val', tmp_path / 'child.log',
                               owner_host))
    child.start()
    lock = zoo.artefact_path(zoo.get_entry(NAME), 'scores-val')
    lock = lock.with_name(lock.name + '.lock')
    assert _wait_for(lambda: srv.requests and lock.exists())
    child.kill()
    child.join()
    assert lock.read_text().split()[:2] == [str(child.pid), owner_host]
    assert any(name.endswith('.part')
               for name in leftovers(tmp_path / 'cache'))
    srv.gate.set()
    start = time.monotonic()
    path = zoo.fetch(NAME, 'scores-val', progress=False)
    assert time.monotonic() - start < 30
    assert path.read_bytes() == published['scores-val']
    err = _without_notice(capfd.readouterr().err.splitlines(), lock.parent,
                          locks)
    assert not [line for line in err if 'waiting for' in line], err
    if locks == 'pid-file':
        assert (f'{path.name}: removed the stale lock {lock} (its process '
                f'{child.pid} is gone)') in err
    else:
        assert not [line for line in err if 'lock' in line], err
    assert leftovers(tmp_path / 'cache') == []


def test_lock_without_progress_is_broken_after_the_timeout(
        host, tmp_path, monkeypatch, capfd, locks):
    """An owner on another host that stopped making progress (and, with
    flock, still holds its lock): waited for, then broken after
    $BDD100K_INS_SEG_LOCK_TIMEOUT seconds."""
    srv, published = host
    monkeypatch.setenv(zoo.LOCK_TIMEOUT_ENV, '1.5')
    dest = zoo.artefact_path(zoo.get_entry(NAME), 'visuals')
    dest.parent.mkdir(parents=True)
    lock = dest.with_name(dest.name + '.lock')
    lock.write_text(f'4242 other-host {time.time():.3f}\n')
    held = os.open(lock, os.O_RDWR)
    try:
        if locks == 'flock':
            fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        start = time.monotonic()
        assert zoo.fetch(NAME, 'visuals', progress=False).read_bytes() == \
            published['visuals']
        assert time.monotonic() - start >= 1.5
    finally:
        os.close(held)
    err = _without_notice(capfd.readouterr().err.splitlines(), dest.parent,
                          locks)
    assert err[0] == (f'{dest.name}: waiting for process 4242 on '
                      f'other-host, which is downloading it (lock {lock})')
    assert err[1].startswith(f'{dest.name}: removed the stale lock {lock} '
                             '(no progress for ')
    assert leftovers(tmp_path / 'cache') == []


def test_a_lock_is_released_on_errors(host, tmp_path):
    srv, _ = host
    srv.behaviour[f'{NAME}.json'] = 'cut'
    with pytest.raises(zoo.ZooError, match='closed after'):
        zoo.fetch(NAME, 'scores-test', progress=False)
    assert leftovers(tmp_path / 'cache') == []


def test_unwritable_cache_is_a_one_line_error(host, tmp_path, monkeypatch):
    srv, _ = host
    blocker = tmp_path / 'not_a_folder'
    blocker.write_text('a file where the cache folder should be')
    monkeypatch.setenv(zoo.CACHE_ENV, str(blocker))
    with pytest.raises(zoo.ZooError, match='cannot create the cache '
                       f'folder {blocker}/scores-val: Not a directory'):
        zoo.fetch(NAME, 'scores-val', progress=False)
    (tmp_path / 'ro').mkdir()
    (tmp_path / 'ro').chmod(0o500)
    monkeypatch.setenv(zoo.CACHE_ENV, str(tmp_path / 'ro'))
    try:
        if os.access(tmp_path / 'ro', os.W_OK):  # root ignores the mode
            (tmp_path / 'ro').chmod(0o700)
            (tmp_path / 'ro' / 'scores-val').write_text('a file')
            expected = 'cannot create the cache folder'
        else:
            expected = 'cannot create the download lock'
        with pytest.raises(zoo.ZooError, match=expected):
            zoo.fetch(NAME, 'scores-val', progress=False)
    finally:
        (tmp_path / 'ro').chmod(0o700)
    assert srv.requests == []
