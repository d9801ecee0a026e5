"""Training curves from mmengine's scalar logs (what mmdet's
``analyze_logs.py plot_curve`` draws, for mmengine's files).

``train.py`` (mmengine's ``LoggerHook`` with the local visualizer backend)
appends one json line per logged training iteration to
``WORK_DIR/<timestamp>/vis_data/scalars.json`` (``loss``, ``loss_*``,
``lr``, ``time``, ``data_time``, ``memory``, ``step`` = the iteration) and
one per validation (``bdd100k/segm_AP``, ``bdd100k/segm_AP50``, ...,
``bdd100k/segm_AP_<class>``). A work folder resumed holds several
timestamp folders: they are read in order, a later run's record of an
iteration replacing an earlier one's.

A validation record's ``step`` is an epoch number or an iteration,
depending on the loop and the hook's settings; it is placed at the larger
of that step and the last training iteration logged before it.
"""
import glob
import json
import math
import os.path as osp
from typing import Dict, List, Tuple

from bdd100k_ins_seg.cli import InputError

#: Keys of a record that are not curves.
BOOKKEEPING = ('step', 'epoch', 'iter', 'memory', 'data_time', 'time',
               'eta')


def scalar_files(work_dir: str) -> List[str]:
    """The ``scalars.json`` files of a work folder, oldest run first (a
    ``scalars.json`` file or a timestamp folder may be given too)."""
    if osp.isfile(work_dir):
        return [work_dir]
    found = sorted(glob.glob(osp.join(work_dir, '*', 'vis_data',
                                      'scalars.json')))
    found += sorted(glob.glob(osp.join(work_dir, 'vis_data',
                                       'scalars.json')))
    return found


def read_records(work_dir: str) -> Tuple[List[Dict], List[Dict]]:
    """(train records, validation records) of a work folder, each with an
    ``x``: the iteration it belongs to.

    Raises:
        InputError: no scalar log, or a line that is not json.
    """
    files = scalar_files(work_dir)
    if not files:
        raise InputError(f'--log {work_dir}', 'no mmengine scalar log '
                         '(<timestamp>/vis_data/scalars.json) in it')
    train: Dict[int, Dict] = {}
    val: Dict[int, Dict] = {}
    for path in files:
        last = 0
        with open(path, encoding='utf-8') as f:
            for n, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except ValueError:
                    raise InputError(f'{path}:{n}', 'not a json line') \
                        from None
                step = int(record.get('step', 0))
                if any(k.startswith('loss') for k in record) or \
                        'lr' in record:
                    record['x'] = step
                    train[step] = record
                    last = max(last, step)
                else:
                    record['x'] = max(last, step)
                    val[record['x']] = record
    return ([train[k] for k in sorted(train)], [val[k] for k in sorted(val)])


def _series(records: List[Dict], key: str) -> Tuple[List, List]:
    xs, ys = [], []
    for record in records:
        value = record.get(key)
        if isinstance(value, (int, float)) and not (
                isinstance(value, float) and math.isnan(value)):
            xs.append(record['x'])
            ys.append(value)
    return xs, ys


def groups(runs: Dict[str, Tuple[List[Dict], List[Dict]]]
           ) -> Dict[str, Dict]:
    """The figures to draw: group -> dict(title, ylabel, logy, series:
    panel -> {run label: (xs, ys)}). Groups: ``losses``, ``lr``, ``time``,
    ``train_other`` (``acc``, ``grad_norm``...), ``val_ap`` (the overall
    metrics) and ``val_ap_per_class``."""
    out = {}

    def add(group, title, ylabel, panel, label, series, logy=False):
        if not series[0]:
            return
        entry = out.setdefault(group, dict(title=title, ylabel=ylabel,
                                           logy=logy, series={}))
        entry['series'].setdefault(panel, {})[label] = series

    for label, (train, val) in runs.items():
        keys = sorted({k for r in train for k in r})
        for key in (['loss'] if 'loss' in keys else []) + [
                k for k in keys if k.startswith('loss') and k != 'loss']:
            add('losses', 'Training losses', 'loss', key, label,
                _series(train, key))
        for key in [k for k in keys if k.endswith('lr')]:
            add('lr', 'Learning rate', 'lr', key, label, _series(train, key),
                logy=True)
        for key in ('time', 'data_time'):
            add('time', 'Seconds per iteration', 's', key, label,
                _series(train, key))
        for key in keys:  # acc, grad_norm, ...
            if key not in BOOKKEEPING and key != 'x' and not \
                    key.startswith('loss') and not key.endswith('lr'):
                add('train_other', 'Other training scalars', '', key, label,
                    _series(train, key))
        metrics = sorted({k for r in val for k in r
                          if k not in BOOKKEEPING and k != 'x'})
        for key in metrics:
            name = key.split('/')[-1]
            if name.startswith('segm_AP_'):
                add('val_ap_per_class', 'Validation mask AP by class',
                    'AP (x100)', name[len('segm_AP_'):], label,
                    _series(val, key))
            else:
                add('val_ap', 'Validation metrics', 'x100', name, label,
                    _series(val, key))
    return out


def plot_logs(work_dirs: List[str], out_dir: str) -> Dict[str, str]:
    """One PNG per group of :func:`groups` in ``out_dir``, the runs of
    several work folders overlaid; returns ``{group: path}``."""
    from bdd100k_ins_seg.analysis import plots
    runs = {}
    for work_dir in work_dirs:
        label = osp.basename(osp.normpath(work_dir))
        while label in runs:
            label += "'"
        runs[label] = read_records(work_dir)
    written = {}
    for group, entry in groups(runs).items():
        written[group] = plots.curves(
            entry['series'], entry['title'], entry['ylabel'],
            osp.join(out_dir, f'{group}.png'), logy=entry['logy'])
    if not written:
        raise InputError('--log', 'the scalar logs hold no losses, '
                         'learning rates or validation metrics')
    return written


__all__ = ['scalar_files', 'read_records', 'groups', 'plot_logs']
