"""test.py's checks before inference, its run manifest and resumption.

Before any image is inferred (every rank runs the same checks on the same
files, so all ranks stop within seconds of each other):

- every image of the run exists, is readable, starts like an image file
  (its header names a known format) and, for a JPEG or PNG, ends with its
  end marker (a file cut short has none); PIL reads the first bytes and the
  last 4 KiB only. Other damage to the pixel data is found when the data
  loader decodes the image: the run then stops with a one-line error naming
  it;
- no two images share a stem (their bitmasks would be one file);
- with ``--eval``, the GT folder holds ``<stem>.png`` for every image, and
  no other bitmask unless ``--only-predicted``;
- no other run writes into ``--format-dir`` (:mod:`.folder_lock`);
- the output folder exists or can be created, and a file can be written in
  it (a probe file, removed at once);
- ``--format-dir OUT`` holds no interrupted run unless ``--resume`` is
  given, and a run manifest (``OUT/.run.json``: config, checkpoint and image
  list fingerprints, and the score thresholds) of another config,
  checkpoint, image set or score threshold refuses the folder.

With ``--resume`` the images whose PNG and score line are complete
(:func:`bdd100k_ins_seg.inference.writer.read_journals`, or a complete ``score.json``)
are left out of the dataset, and the metric adds the new ones to them.
"""
import hashlib
import json
import os
import os.path as osp
import signal
import tempfile
from typing import Callable, Dict, List, Optional, Sequence, Set

from bdd100k_ins_seg.formats.bitmask import (
    atomic_write,
    bitmask_name,
    frame_name)
from bdd100k_ins_seg.cli import InputError
from bdd100k_ins_seg.inference import folder_lock
from bdd100k_ins_seg.inference.writer import (
    PARTS_DIR,
    read_journals,
    read_score_file)

MANIFEST = '.run.json'
#: What must match for a folder to be resumed, with the words of the error.
#: The score thresholds come first: another threshold also changes the
#: config fingerprint, and the error names the threshold.
_IDENTITY = (('score_thr', 'score threshold'), ('config', 'config'),
             ('checkpoint', 'checkpoint'), ('images', 'image list'),
             ('fuse_conv_bn', 'forward (--fuse-conv-bn)'))


class PreflightError(InputError):
    """A check before inference failed: ``what`` is wrong, and ``why``."""


class Terminated(BaseException):
    """SIGTERM arrived (a scheduler's preemption, ``kill``)."""


def raise_on_sigterm() -> None:
    """Turn SIGTERM into :class:`Terminated` in the main thread, so the
    finished images are flushed before the process exits."""
    def handler(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second one kills
        raise Terminated()
    signal.signal(signal.SIGTERM, handler)


def dataset_image_paths(dataset_cfg) -> List[str]:
    """The image paths of the test dataset, in dataset order."""
    import copy

    from mmdet.registry import DATASETS
    from mmdet.utils import register_all_modules
    register_all_modules(init_default_scope=False)
    cfg = copy.deepcopy(dataset_cfg)
    cfg.pop('indices', None)
    cfg['pipeline'] = []
    cfg['lazy_init'] = False
    try:
        dataset = DATASETS.build(cfg)
    except (OSError, ValueError, KeyError) as e:  # unreadable list / image
        raise PreflightError('test images', str(e)) from None
    return [dataset.get_data_info(i)['img_path']
            for i in range(len(dataset))]


def run_inputs(cfg, gt: Optional[str]) -> Dict:
    """Where a run's inputs are, recorded in its manifest for
    ``tools/analyze.py --from-run``: ``gt`` (the GT bitmask folder or RLE
    json, None) and ``img_dir`` (the test dataset's image folder)."""
    dataset = cfg.test_dataloader.dataset
    prefix = dataset.get('data_prefix') or {}
    img_dir = osp.join(dataset.get('data_root') or '',
                       prefix.get('img', '') if isinstance(prefix, dict)
                       else '')
    return dict(gt=osp.abspath(gt) if gt else None,
                img_dir=osp.abspath(img_dir) if img_dir else None)


def check_images(paths: Sequence[str]) -> None:
    """Each file exists, has a known image header and, for a JPEG or PNG,
    its end marker (:func:`bdd100k_ins_seg.plugin.datasets.check_image_file`)."""
    from bdd100k_ins_seg.formats.images import (
        ImageFileError,
        ImageNotFoundError,
        check_image_files)
    try:
        check_image_files(paths, 'test images')
    except ImageNotFoundError as e:
        raise PreflightError(f'image {e.path}', 'not found') from None
    except ImageFileError as e:
        raise PreflightError(e.what, e.why) from None


def check_gt(gt_dir: str, paths: Sequence[str],
             only_predicted: bool = False) -> None:
    """Every image has its GT bitmask ``<stem>.png`` in ``gt_dir`` and,
    unless ``only_predicted``, every GT bitmask is of an image of the run
    (as the official evaluator wants)."""
    if not osp.isdir(gt_dir):
        raise PreflightError(f'GT bitmask folder {gt_dir}', 'not found')
    have = set(os.listdir(gt_dir))
    missing = [bitmask_name(p) for p in paths if bitmask_name(p) not in have]
    if missing:
        raise PreflightError(
            f'GT bitmask folder {gt_dir}', f'no bitmask for {len(missing)} '
            f'of the {len(paths)} images, e.g. {missing[0]}')
    names = {bitmask_name(p) for p in paths}
    extra = sorted(n for n in have if n.endswith('.png') and n not in names)
    if extra and not only_predicted:
        raise PreflightError(
            f'GT bitmask folder {gt_dir}', f'{len(extra)} of its '
            f'{len(extra) + len(names)} bitmasks '
            f'{"has" if len(extra) == 1 else "have"} no image in this run, '
            f'e.g. {extra[0]}: to score the {len(names)} images of the run '
            'only, add --only-predicted')


def check_unique_stems(paths: Sequence[str]) -> None:
    """No two images share a stem: a bitmask is named ``<stem>.png``, so
    ``a.jpg`` and ``a.png`` would write one file."""
    seen: Dict[str, str] = {}
    for path in paths:
        other = seen.setdefault(bitmask_name(path), path)
        if other != path:
            raise PreflightError(
                'test images', f'{other} and {path} have the same stem: both '
                f'predictions would be bitmasks/{bitmask_name(path)}; rename '
                'one')


def check_output_dir(out_dir: str) -> None:
    """``out_dir`` is a folder, or can be made, and is writable."""
    probe_in = osp.abspath(out_dir)
    while not osp.exists(probe_in):
        parent = osp.dirname(probe_in)
        if parent == probe_in:
            break
        probe_in = parent
    if not osp.isdir(probe_in):
        raise PreflightError(f'output folder {out_dir}', 'cannot be '
                             f'created: {probe_in} is not a folder')
    try:
        with tempfile.TemporaryFile(dir=probe_in):
            pass
    except OSError as e:
        where = ('is not writable' if probe_in == osp.abspath(out_dir)
                 else f'cannot be created in {probe_in}')
        raise PreflightError(f'output folder {out_dir}',
                             f'{where}: {e.strerror or e}') from None


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(1 << 20), b''):
            digest.update(block)
    return digest.hexdigest()


def score_thresholds(cfg) -> Dict[str, object]:
    """Every score threshold of ``cfg`` that drops predictions, by its
    config key: the metric's (``test_evaluator.score_thr``, 0 when unset)
    and each ``score_thr`` in the model's ``test_cfg`` (e.g.
    ``model.test_cfg.rcnn.score_thr``)."""
    evaluator = cfg.get('test_evaluator') or {}
    found = {'test_evaluator.score_thr': evaluator.get('score_thr', 0.0)}

    def walk(node, key):
        if isinstance(node, dict):
            for name, value in node.items():
                if name == 'score_thr':
                    found[f'{key}.{name}'] = value
                else:
                    walk(value, f'{key}.{name}')
        elif isinstance(node, (list, tuple)):
            for i, value in enumerate(node):
                walk(value, f'{key}.{i}')
    walk(cfg.to_dict().get('model', {}).get('test_cfg'), 'model.test_cfg')
    return found


def make_manifest(cfg, checkpoint: str, paths: Sequence[str],
                  fuse_conv_bn: bool = False) -> Dict:
    """Fingerprints of what decides the outputs: the model (with its
    test_cfg), the test pipeline and score threshold, the checkpoint's
    bytes (or URL), the image list, and the folded forward of
    ``--fuse-conv-bn`` (recorded only when on: its outputs differ from the
    plain forward's in the last digits). The score thresholds are also
    recorded as they are (:func:`score_thresholds`), so that a resume with
    another one is refused naming it."""
    thresholds = score_thresholds(cfg)
    score_thr = thresholds['test_evaluator.score_thr']
    model = cfg.to_dict().get('model', {})
    pipeline = cfg.to_dict().get('test_dataloader', {}).get(
        'dataset', {}).get('pipeline')
    config = json.dumps(dict(model=model, pipeline=pipeline,
                             score_thr=score_thr),
                        sort_keys=True, default=str)
    if '://' in checkpoint:
        ckpt = checkpoint
    else:
        ckpt = 'sha256:' + file_sha256(checkpoint)
    names = '\n'.join(frame_name(p) for p in paths)
    manifest = dict(config=_sha256(config.encode()), checkpoint=ckpt,
                    images=_sha256(names.encode()), num_images=len(paths),
                    test_cfg=model.get('test_cfg'), score_thr=thresholds)
    if fuse_conv_bn:
        manifest['fuse_conv_bn'] = True
    return manifest


def _read_manifest(out_dir: str) -> Optional[Dict]:
    path = osp.join(out_dir, MANIFEST)
    if not osp.isfile(path):
        return None
    try:
        with open(path, encoding='utf-8') as f:
            return json.load(f)
    except ValueError:
        return None  # cut by a kill before its rename: cannot happen


def _incomplete(out_dir: str) -> bool:
    """A folder some run wrote into without finishing it."""
    if not osp.isdir(out_dir) or osp.isfile(osp.join(out_dir, 'score.json')):
        return False
    if osp.isfile(osp.join(out_dir, 'rles.json')):  # --out-format rle
        return False
    bitmasks = osp.join(out_dir, 'bitmasks')
    return (osp.isdir(osp.join(out_dir, PARTS_DIR))
            or osp.isfile(osp.join(out_dir, MANIFEST))
            or (osp.isdir(bitmasks) and bool(os.listdir(bitmasks))))


def _difference(old, new) -> str:
    """``old != new``; of two dicts, only the keys that differ."""
    if isinstance(old, dict) and isinstance(new, dict):
        return ', '.join(f'{key} {old.get(key)} != {new.get(key)}'
                         for key in sorted(set(old) | set(new))
                         if old.get(key) != new.get(key))
    return f'{old} != {new}'


def prepare_output(out_dir: str, manifest: Dict, resume: bool) -> Set[str]:
    """Check ``out_dir`` against this run (nothing is written here).

    Returns the frame names already complete there (empty unless
    ``resume``). Raises :class:`PreflightError` for an interrupted folder
    without ``resume``, or a folder of another config/checkpoint/images/
    score threshold.
    The metric writes ``manifest`` into the folder before its first image.
    """
    check_output_dir(out_dir)
    done: Set[str] = set()
    if resume:
        old = _read_manifest(out_dir)
        if old is not None:
            for key, words in _IDENTITY:
                if key == 'score_thr' and key not in old:
                    continue  # an older manifest: its config covers them
                if old.get(key) != manifest.get(key):
                    raise PreflightError(
                        out_dir, f'holds predictions of another {words} '
                        f'({_difference(old.get(key), manifest.get(key))})'
                        '; resume it with the same config, checkpoint, '
                        'images, score thresholds and --fuse-conv-bn, or '
                        'use another --format-dir')
            done.update(read_score_file(out_dir))
            done.update(read_journals(out_dir))
    elif _incomplete(out_dir):
        raise PreflightError(
            out_dir, 'holds an interrupted run: add --resume to continue '
            'it, or remove the folder')
    return done


def write_manifest(out_dir: str, manifest: Dict) -> None:
    os.makedirs(out_dir, exist_ok=True)
    atomic_write(osp.join(out_dir, MANIFEST),
                 json.dumps(manifest, indent=1).encode('utf-8'), fsync=True)


def preflight(cfg, checkpoint: str, gt_dir: Optional[str],
              format_dir: Optional[str], resume: bool,
              fuse_conv_bn: bool = False,
              only_predicted: bool = False,
              say: Optional[Callable[[str], None]] = None) -> Optional[Dict]:
    """All of test.py's checks before the model is built (see the module
    docstring). With ``format_dir``, leaves the complete images out of
    ``cfg.test_dataloader.dataset`` (``indices``), locks the folder
    (:mod:`.folder_lock`) and returns the run manifest for the metric to
    record; ``say`` gets a line on the images (their number, GT, output)
    once every check passed. Raises :class:`PreflightError` (or
    :class:`~.folder_lock.FolderInUseError`)."""
    dataset_cfg = cfg.test_dataloader.dataset
    paths = dataset_image_paths(dataset_cfg)
    check_unique_stems(paths)
    if gt_dir is not None:
        check_gt(gt_dir, paths, only_predicted)
    say = say or (lambda line: None)
    summary = f'{len(paths)}' + (f', GT {gt_dir}' if gt_dir else '')
    if format_dir is None:
        check_images(paths)
        say(summary)
        return None
    manifest = make_manifest(cfg, checkpoint, paths, fuse_conv_bn)
    folder_lock.check_not_in_use(format_dir)
    done = prepare_output(format_dir, manifest, resume)
    todo = todo_indices(paths, done)
    check_images([paths[i] for i in todo])
    summary += f', output {format_dir}'
    if resume:
        summary += (f' (resuming: {len(paths) - len(todo)} of {len(paths)} '
                    f'images done, {len(todo)} to infer)')
    if not todo and paths:
        # mmengine's loop needs one image: the first is inferred again
        # (the same file) and the folder closed as usual.
        todo = [0]
    if done:
        dataset_cfg.indices = todo
    folder_lock.lock(format_dir)  # released when this process ends
    say(summary)
    return manifest


def todo_indices(paths: Sequence[str], done: Set[str]) -> List[int]:
    """Dataset indices of the images still to infer."""
    return [i for i, p in enumerate(paths) if frame_name(p) not in done]


def one_line(error: BaseException) -> Optional[str]:
    """A one-line message for a data error met during inference, or None.

    A data-loader worker re-raises with the worker's whole traceback as the
    message: its last line is the error itself.
    """
    text = str(error).strip()
    if 'Original Traceback' in text:
        text = text.splitlines()[-1]
        text = text.split(': ', 1)[1] if ': ' in text else text
    if isinstance(error, AssertionError) and 'load image' not in text:
        return None
    return text.replace('\n', ' ')


__all__ = ['PreflightError', 'Terminated', 'raise_on_sigterm',
           'dataset_image_paths', 'run_inputs', 'check_images',
           'check_gt', 'check_unique_stems',
           'check_output_dir', 'score_thresholds', 'make_manifest',
           'prepare_output', 'write_manifest', 'preflight',
           'todo_indices', 'one_line', 'MANIFEST']
