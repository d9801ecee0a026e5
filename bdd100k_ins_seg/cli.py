"""What every command-line entry point shares.

- :func:`fail`: the one error format, ``<script>: error: <what>: <why>``,
  exit status 1 (argparse's usage errors keep their status 2);
- :func:`reason`: an exception as the ``<why>`` of that line;
- :class:`InputError`: bad input a check found, carrying that line's
  ``what`` and ``why``;
- :func:`quiet_known_warnings`: silence the warnings of mmengine and mmdet
  the user cannot act on (only those, by text and source module; every
  other warning is still shown). Importing ``bdd100k_ins_seg`` calls it.

This module imports nothing heavy; the scripts still import the package
(and with it torch, mmengine, mmdet) only after their arguments are parsed,
so that ``--help`` answers at once.
"""
import argparse
import logging
import os.path as osp
import re
import sys
import warnings
from typing import Dict, List, NoReturn, Union


class InputError(ValueError):
    """Bad input a check found before the work started: ``what`` is wrong,
    and ``why`` (one line: :func:`fail` prints them)."""

    def __init__(self, what: str, why: str) -> None:
        super().__init__(f'{what}: {why}')
        self.what, self.why = what, ' '.join(str(why).split())


def script_name() -> str:
    """The running script's file name (``test.py``), as argparse names it."""
    return osp.basename(sys.argv[0]) if sys.argv and sys.argv[0] else 'python'


def reason(error: BaseException) -> str:
    """``error`` as one line of text: its message, else its type's name.

    A ``KeyError`` shows its key without the quotes ``str()`` adds; an
    ``OSError`` with a file name reads ``<file>: <strerror>``.
    """
    if isinstance(error, KeyError) and len(error.args) == 1:
        text = str(error.args[0])
    elif isinstance(error, OSError) and error.filename and error.strerror:
        text = f'{error.filename}: {error.strerror}'
    else:
        text = str(error)
    text = ' '.join(text.split())
    return text or type(error).__name__


def error_line(what: str, why: Union[str, BaseException]) -> str:
    """``<script>: error: <what>: <why>`` on one line (see :func:`fail`)."""
    if isinstance(why, BaseException):
        why = reason(why)
    what = ' '.join(str(what).split())
    why = ' '.join(str(why).split())
    return f'{script_name()}: error: {what}: {why}'


def fail(what: str, why: Union[str, BaseException],
         code: int = 1) -> NoReturn:
    """Stop the script with :func:`error_line` on stderr and status ``code``.

    Args:
        what: the thing that is wrong, named as the user gave it
            (``config configs/x.py``, ``--score-thr``, a path).
        why: what is wrong with it, or the exception that says so.
        code: exit status (1; argparse uses 2 for usage errors).
    """
    # One write of the whole line: the ranks of a job share stderr, and a
    # line written in pieces (print writes the newline apart) can be cut
    # by another rank's.
    sys.stderr.write(error_line(what, why) + '\n')
    sys.stderr.flush()
    sys.exit(code)


def config_options(pairs: List[str]) -> Dict:
    """``--cfg-options KEY=VALUE ...`` read as mmengine's ``DictAction``
    reads them (``a.b=1``, ``k=[1,2]``, ``k=(a,b)``, ``k=None``...).

    The scripts take the option as plain strings and call this after
    parsing, so that ``--help`` does not wait for mmengine.

    Raises:
        ValueError: an item without ``=``.
    """
    from mmengine.config import DictAction
    for pair in pairs:
        if '=' not in pair:
            raise ValueError(f'{pair!r} is not KEY=VALUE')
    namespace = argparse.Namespace()
    DictAction(option_strings=['--cfg-options'], dest='cfg_options')(
        None, namespace, pairs)
    return namespace.cfg_options


# (message regex, module regex, category): warnings known to be harmless
# here, matched by their text and by the module they are attributed to.
KNOWN_WARNINGS = (
    # mmengine.utils.package_utils imports pkg_resources (and reloads it
    # through importlib) to look packages up; setuptools is pinned < 82,
    # where it still exists, so the deprecation is not the user's to fix.
    (r'pkg_resources is deprecated as an API',
     r'(mmengine\.utils\.package_utils|importlib|pkg_resources)\Z',
     UserWarning),
    # torch deprecates the broadcast_buffers argument mmengine's DDP wrapper
    # passes (every rank printed it when the model was wrapped).
    (r'`broadcast_buffers` is deprecated',
     r'mmengine\.model\.wrappers\.distributed\Z', FutureWarning),
    # A visualizer without a save_dir (DetInferencer, a test run) leaves out
    # its LocalVisBackend: nothing is lost, nothing to fix.
    (r"Failed to add <class 'mmengine\.visualization\.vis_backend\."
     r"LocalVisBackend'>, please provide the `save_dir` argument",
     r'mmengine\.visualization\.visualizer\Z', UserWarning),
)

# (message regex, module regex): mmengine's logger warnings (``print_log``)
# known to be harmless, matched by their text and by the module that logged
# them.
KNOWN_LOG_WARNINGS = (
    # mmengine's own CheckpointHook/LoggerHook still make a FileClient (of
    # the disk backend's old name).
    (r'"FileClient" will be deprecated in future',
     r'mmengine\.fileio\.file_client\Z'),
    (r'"HardDiskBackend" is the alias of "LocalBackend"',
     r'mmengine\.fileio\.file_client\Z'),
    # DetInferencer and init_detector switch the registry scope to mmdet,
    # and build mmengine's collate function from it.
    (r'The current default scope "[^"]*" is not "mmdet", '
     r'`init_default_scope` will force',
     r'mmengine\.registry\.utils\Z'),
    (r'Failed to search registry with scope "mmdet" in the "function" '
     r'registry tree',
     r'mmengine\.registry\.registry\Z'),
)


def quiet_known_warnings() -> None:
    """Ignore the :data:`KNOWN_WARNINGS` (idempotent; nothing else), and,
    once mmengine is imported, the :data:`KNOWN_LOG_WARNINGS` of its
    loggers (:func:`quiet_known_log_warnings`)."""
    for message, module, category in KNOWN_WARNINGS:
        warnings.filterwarnings('ignore', message=message,
                                category=category, module=module)
    if 'mmengine.logging' in sys.modules:
        quiet_known_log_warnings()


class KnownLogWarnings(logging.Filter):
    """Drops the mmengine logger warnings of :data:`KNOWN_LOG_WARNINGS`:
    the text must match, and so must the module of the first caller
    outside the logging code (the module that logged it)."""

    _LOGGING = ('logging', 'mmengine.logging.logger', __name__)

    def __init__(self) -> None:
        super().__init__()
        self.known = [(re.compile(message), re.compile(module))
                      for message, module in KNOWN_LOG_WARNINGS]

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno != logging.WARNING:
            return True
        text = record.getMessage()
        matches = [module for message, module in self.known
                   if message.match(text)]
        if not matches:
            return True
        frame = sys._getframe(1)
        while frame is not None and frame.f_globals.get(
                '__name__', '') in self._LOGGING:
            frame = frame.f_back
        source = frame.f_globals.get('__name__', '') if frame else ''
        return not any(module.match(source) for module in matches)


def quiet_known_log_warnings() -> None:
    """Give every mmengine logger, present and future, the
    :class:`KnownLogWarnings` filter (idempotent; imports mmengine)."""
    from mmengine.logging import MMLogger
    init = MMLogger.__init__
    if getattr(init, 'known_log_warnings', None) is None:
        known = KnownLogWarnings()

        def __init__(self, *args, **kwargs):
            init(self, *args, **kwargs)
            self.addFilter(known)

        __init__.known_log_warnings = known
        MMLogger.__init__ = __init__
    known = MMLogger.__init__.known_log_warnings
    for logger in list(MMLogger._instance_dict.values()):
        if known not in logger.filters:
            logger.addFilter(known)
