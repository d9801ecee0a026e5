"""What a training run reads and writes, checked before the runner is built
(so before mmengine's environment report): a missing json, image folder,
GT folder or an unwritable work folder is the first thing ``train.py``
prints, in one line.

Only presence is checked here; the images themselves are checked when the
datasets are built, before the first iteration
(:class:`bdd100k_ins_seg.plugin.datasets.BDD100KInsSegDataset`).
Paths on a storage backend (``backend_args``, ``s3://...``) are left to it.
"""
import os.path as osp
import tempfile
from typing import Iterator, Optional, Tuple

from bdd100k_ins_seg.cli import InputError


def _datasets(dataset) -> Iterator[dict]:
    """The leaf dataset configs of a (wrapped) dataset config."""
    if not isinstance(dataset, dict):
        return
    if isinstance(dataset.get('dataset'), dict):  # RepeatDataset, ...
        yield from _datasets(dataset['dataset'])
    elif isinstance(dataset.get('datasets'), (list, tuple)):  # Concat
        for inner in dataset['datasets']:
            yield from _datasets(inner)
    else:
        yield dataset


def _local(path: str, dataset: dict) -> bool:
    return bool(path) and '://' not in path and not dataset.get(
        'backend_args')


def _joined(dataset: dict, path: Optional[str]) -> Optional[str]:
    """``path`` joined with the dataset's ``data_root`` as mmengine joins
    it (a relative path only)."""
    if not path:
        return path
    root = dataset.get('data_root') or ''
    return path if osp.isabs(path) or not root else osp.join(root, path)


def dataset_inputs(dataset_cfg, split: str
                   ) -> Iterator[Tuple[str, str, str]]:
    """``(what, path, kind)`` of every file (``kind='file'``) and folder
    (``'dir'``) a dataset config reads."""
    for dataset in _datasets(dataset_cfg):
        ann_file = _joined(dataset, dataset.get('ann_file'))
        if _local(ann_file, dataset):
            yield f'{split} json {ann_file}', ann_file, 'file'
        prefix = dataset.get('data_prefix') or {}
        img = prefix.get('img') if isinstance(prefix, dict) else None
        img_dir = _joined(dataset, img)
        if _local(img_dir, dataset):
            yield f'{split} images {img_dir}', img_dir, 'dir'


def check_writable(path: str, what: str) -> None:
    """``path`` is a folder, or can be made, and a file can be written."""
    probe = osp.abspath(path)
    while not osp.exists(probe):
        parent = osp.dirname(probe)
        if parent == probe:
            break
        probe = parent
    if not osp.isdir(probe):
        raise InputError(what, f'cannot be created: {probe} is not a folder')
    try:
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as e:
        raise InputError(what, f'{probe} is not writable: '
                         f'{e.strerror or e}') from None


def check_training_inputs(cfg) -> None:
    """The training and validation jsons and image folders, the
    validation GT bitmask folder and the work folder, in that order.

    Raises:
        InputError: the first one missing (or not writable).
    """
    checks = []
    loader = cfg.get('train_dataloader')
    if loader:
        checks += dataset_inputs(loader.get('dataset'), 'training')
    loader = cfg.get('val_dataloader')
    if loader and cfg.get('val_cfg') is not None:
        checks += dataset_inputs(loader.get('dataset'), 'validation')
        evaluator = cfg.get('val_evaluator')
        gt_dir = evaluator.get('gt_dir') if isinstance(evaluator,
                                                       dict) else None
        if gt_dir and '://' not in gt_dir:
            checks.append((f'validation GT bitmask folder {gt_dir}', gt_dir,
                           'dir'))
    for what, path, kind in checks:
        if kind == 'file' and not osp.isfile(path):
            raise InputError(what, 'is a folder, not a file' if osp.isdir(
                path) else 'not found')
        if kind == 'dir' and not osp.isdir(path):
            raise InputError(what, 'is a file, not a folder' if osp.isfile(
                path) else 'not found')
    if cfg.get('work_dir'):
        check_writable(cfg.work_dir, f'work folder {cfg.work_dir}')


__all__ = ['check_training_inputs', 'check_writable', 'dataset_inputs']
