"""What every command-line entry point shares.

- :func:`fail`: the one error format, ``<script>: error: <what>: <why>``,
  exit status 1 (argparse's usage errors keep their status 2);
- :func:`reason`: an exception as the ``<why>`` of that line;
- :class:`InputError`: bad input a check found, carrying that line's
  ``what`` and ``why``;
- :func:`quiet_known_warnings`: silence start-up warnings the user cannot act
  on (only those; every other warning is still shown). Importing
  ``bdd100k_ins_seg`` calls it before anything imports mmengine.

This module imports nothing heavy; the scripts still import the package
(and with it torch, mmengine, mmdet) only after their arguments are parsed,
so that ``--help`` answers at once.
"""
import argparse
import os.path as osp
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


# (message regex, module regex): warnings known to be harmless here, matched
# by their text and by the module they are attributed to.
KNOWN_WARNINGS = (
    # mmengine.utils.package_utils imports pkg_resources (and reloads it
    # through importlib) to look packages up; setuptools is pinned < 82,
    # where it still exists, so the deprecation is not the user's to fix.
    (r'pkg_resources is deprecated as an API',
     r'(mmengine\.utils\.package_utils|importlib|pkg_resources)\Z'),
)


def quiet_known_warnings() -> None:
    """Ignore the :data:`KNOWN_WARNINGS` (idempotent; nothing else)."""
    for message, module in KNOWN_WARNINGS:
        warnings.filterwarnings('ignore', message=message,
                                category=UserWarning, module=module)
