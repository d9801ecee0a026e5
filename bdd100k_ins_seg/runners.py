"""Where ``test.py`` writes its logs: nowhere unless asked, and never over
a training's files.

mmengine's Runner writes into its ``work_dir`` the log folder
``<timestamp>/`` and a copy of the config, ``<config name>.py``. A test run
pointed at a training's work folder (the default of the original scripts)
would overwrite that training's config copy and pile up a log folder per
run. :class:`TestRunner` keeps its config copy inside its own log folder,
and :func:`test_work_dir` gives a run without ``--work-dir`` a temporary
folder that is deleted when the process exits (the console has the log).
"""
import atexit
import os.path as osp
import shutil
import tempfile
from typing import Optional

from mmengine.runner import Runner


class TestRunner(Runner):
    """A Runner whose config copy goes into its log folder
    (``work_dir/<timestamp>/``) instead of ``work_dir``."""

    def dump_config(self) -> None:
        if self.cfg.filename is not None:
            filename = osp.basename(self.cfg.filename)
        else:
            filename = f'{self.timestamp}.py'
        self.cfg.dump(osp.join(self.log_dir, filename))


def test_work_dir(work_dir: Optional[str]) -> str:
    """``work_dir`` if given; else a temporary folder removed at exit."""
    if work_dir:
        return work_dir
    scratch = tempfile.mkdtemp(prefix='bdd100k_ins_seg_test_')
    atexit.register(shutil.rmtree, scratch, ignore_errors=True)
    return scratch


# Not pytest tests, although their names start with "test".
TestRunner.__test__ = False
test_work_dir.__test__ = False
