"""test.py end to end on a tiny random Mask R-CNN: one process, two gloo
processes, an unlabeled image folder, and bad inputs."""
import json
import os
import os.path as osp
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import bdd100k_ins_seg.plugin  # noqa: F401  (mmcv ops before mmdet)
from test_evaluation import make_scenes

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
BASES = osp.join(REPO, 'configs', '_base_')

# A Mask R-CNN small enough for seconds on a CPU. score_thr=0 keeps every
# detection of the random weights, so the files compared below are full.
TINY_CONFIG = """
_base_ = [
    'mmdet::_base_/models/mask-rcnn_r50_fpn.py',
    '{bases}/datasets/bdd100k_ins_seg.py',
    '{bases}/default_runtime.py',
]
data_root = '{data}/'
model = dict(
    backbone=dict(depth=18, base_channels=8, init_cfg=None),
    neck=dict(in_channels=[8, 16, 32, 64], out_channels=16),
    rpn_head=dict(in_channels=16, feat_channels=16),
    roi_head=dict(
        bbox_roi_extractor=dict(out_channels=16),
        bbox_head=dict(in_channels=16, fc_out_channels=32, num_classes=8),
        mask_roi_extractor=dict(out_channels=16),
        mask_head=dict(in_channels=16, conv_out_channels=16,
                       num_classes=8)),
    test_cfg=dict(rpn=dict(nms_pre=100, max_per_img=50),
                  rcnn=dict(score_thr=0.0, max_per_img=20)))
pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(160, 96), keep_ratio=True),
    dict(type='PackDetInputs', meta_keys=('img_id', 'img_path', 'ori_shape',
                                          'img_shape', 'scale_factor')),
]
unlabeled_test_pipeline = pipeline
test_dataloader = dict(
    num_workers=0, persistent_workers=False,
    dataset=dict(data_root=data_root, ann_file='coco.json',
                 data_prefix=dict(img='images/'), pipeline=pipeline))
test_evaluator = dict(gt_dir=data_root + 'gt', nproc=1)
"""


def run(args, cwd, launcher_args=None):
    # One thread per process: identical float arithmetic in 1- and
    # 2-process runs (and no oversubscribed cores).
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONPATH=REPO)
    cmd = [sys.executable] + (launcher_args or []) + [
        osp.join(REPO, 'test.py')] + args
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


@pytest.fixture(scope='module')
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp('tiny')
    data = root / 'data'
    make_scenes(str(data), num_images=3, size=(160, 96), seed=3)
    # COCO json by the official converter (tools/to_coco.py wraps it).
    proc = subprocess.run(
        [sys.executable, osp.join(REPO, 'tools', 'to_coco.py'), '-i',
         str(data / 'gt'), '-o', str(data / 'coco.json'), '--nproc', '1'],
        capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    config = root / 'tiny_mask_rcnn.py'
    config.write_text(TINY_CONFIG.format(bases=BASES, data=data))

    from mmengine.config import Config

    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules
    register_all_modules()
    torch.manual_seed(0)
    model = MODELS.build(Config.fromfile(str(config)).model)
    model.init_weights()
    checkpoint = root / 'tiny.pth'
    torch.save({'state_dict': model.state_dict(), 'meta': {}},
               str(checkpoint))
    return root, data, str(config), str(checkpoint)


def read_outputs(out_dir):
    files = sorted(os.listdir(osp.join(out_dir, 'bitmasks')))
    pngs = {n: np.asarray(Image.open(osp.join(out_dir, 'bitmasks', n)))
            for n in files}
    with open(osp.join(out_dir, 'score.json')) as f:
        return pngs, json.load(f)


@pytest.fixture(scope='module')
def one_process(setup):
    root, data, config, checkpoint = setup
    proc = run([config, checkpoint, '--format-dir', 'out1', '--eval',
                '--out-file', 'out1/results.json', '--work-dir', 'wd1'],
               cwd=root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc, root / 'out1'


def test_one_process_writes_and_scores(setup, one_process):
    root, data, config, checkpoint = setup
    proc, out_dir = one_process
    pngs, frames = read_outputs(out_dir)
    stems = sorted(n[:-4] for n in os.listdir(data / 'images'))
    assert sorted(pngs) == [s + '.png' for s in stems]
    assert [f['name'] for f in frames] == [s + '.jpg' for s in stems]
    for frame in frames:
        png = pngs[frame['name'][:-4] + '.png']
        assert png.shape == (96, 160, 4)
        indices = set(np.unique((png[..., 2].astype(int) << 8)
                                | png[..., 3])) - {0}
        assert indices and indices <= {lab['index'] for lab in frame['labels']}
    with open(out_dir / 'results.json') as f:
        official = json.load(f)
    assert set(official) >= {'AP', 'AP50', 'AR100'}
    assert 'OVERALL' in official['AP'][-1]
    assert 'OVERALL' in proc.stdout + proc.stderr  # the printed table


def test_two_gloo_processes_on_image_folder_write_the_same_files(
        setup, one_process):
    """2 ranks on the unlabeled folder == 1 rank on the labeled dataset."""
    root, data, config, checkpoint = setup
    two = run([config, checkpoint, '--img-dir', str(data / 'images'),
               '--format-dir', 'dist', '--work-dir', 'wd_dist',
               '--launcher', 'pytorch'], cwd=root,
              launcher_args=['-m', 'torch.distributed.run',
                             '--nproc_per_node', '2', '--master_port',
                             str(29500 + os.getpid() % 1000)])
    assert two.returncode == 0, two.stderr[-3000:]
    single_pngs, single_frames = read_outputs(one_process[1])
    dist_pngs, dist_frames = read_outputs(root / 'dist')
    # 3 images on 2 ranks: the sampler pads one; none lost or repeated.
    assert len(single_pngs) == 3 and sorted(dist_pngs) == sorted(single_pngs)
    for name, png in single_pngs.items():
        assert png.any()
        assert (dist_pngs[name] == png).all()
    assert dist_frames == single_frames


def one_line_error(proc, text):
    assert proc.returncode != 0
    assert 'Traceback' not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith('test.py: error:') and text in last, proc.stderr


def test_bad_inputs_give_one_line_errors(setup, tmp_path):
    root, data, config, checkpoint = setup
    one_line_error(run(['missing.py', checkpoint, '--eval'], cwd=tmp_path),
                   'config missing.py: not found')
    one_line_error(
        run([config, checkpoint, '--img-dir', 'nowhere', '--format-dir',
             'o'], cwd=tmp_path), 'image folder nowhere: not found')
    one_line_error(run([config, 'none.pth', '--eval'], cwd=tmp_path),
                   'checkpoint none.pth: not found')
    broken = tmp_path / 'broken.pth'
    broken.write_bytes(b'not a checkpoint')
    one_line_error(
        run([config, str(broken), '--format-dir', 'o', '--format-only',
             '--work-dir', 'wd'], cwd=tmp_path),
        f'cannot load checkpoint: checkpoint {broken} is not a torch '
        'checkpoint (a text file)')
    assert not (tmp_path / 'o').exists()


def test_checkpoint_outside_allowlist_needs_unsafe_load(setup, tmp_path):
    """A checkpoint holding a non-allowlisted type is refused, naming the
    type, unless the user opts in with --unsafe-load."""
    import argparse
    root, data, config, checkpoint = setup
    ckpt = torch.load(checkpoint, weights_only=True)
    ckpt['meta'] = {'args': argparse.Namespace(lr=0.02)}
    pickled = tmp_path / 'pickled.pth'
    torch.save(ckpt, str(pickled))
    args = [config, str(pickled), '--img-dir', str(data / 'images'),
            '--format-dir', 'o', '--work-dir', 'wd']
    one_line_error(run(args, cwd=tmp_path), 'argparse.Namespace')
    assert not (tmp_path / 'o').exists()
    trusted = run(args + ['--unsafe-load'], cwd=tmp_path)
    assert trusted.returncode == 0, trusted.stderr[-2000:]
    assert len(os.listdir(tmp_path / 'o' / 'bitmasks')) == 3


def test_runs_leave_a_training_folder_alone(setup, tmp_path):
    """Without --work-dir nothing but the outputs is written (logs: console
    only); with a training's work folder as --work-dir, the training's
    config copy, logs and last_checkpoint stay as they were."""
    root, data, config, checkpoint = setup
    stem = osp.splitext(osp.basename(config))[0]
    training = tmp_path / 'work_dirs' / stem
    (training / '20260101_000000').mkdir(parents=True)
    files = {training / f'{stem}.py': 'the training config copy',
             training / 'last_checkpoint': str(training / 'iter_3.pth'),
             training / '20260101_000000' / '20260101_000000.log': 'log'}
    for path, text in files.items():
        path.write_text(text)
    scratch = tmp_path / 'tmp'  # the runs' temporary folders go here
    scratch.mkdir()
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONPATH=REPO,
               TMPDIR=str(scratch))

    def test_py(*args):
        proc = subprocess.run(
            [sys.executable, osp.join(REPO, 'test.py'), config, checkpoint,
             '--img-dir', str(data / 'images'), '--format-dir', 'out'] +
            list(args), cwd=tmp_path, env=env, capture_output=True,
            text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return proc

    before = set(tmp_path.rglob('*'))
    proc = test_py()
    new = set(tmp_path.rglob('*')) - before
    assert new and all(p.is_relative_to(tmp_path / 'out') for p in new), new
    assert os.listdir(scratch) == []  # the temporary work folder is gone
    assert 'Epoch(test)' in proc.stdout + proc.stderr  # logged to console

    test_py('--work-dir', str(training))
    for path, text in files.items():
        assert path.read_text() == text
    runs = sorted(set(os.listdir(training)) -
                  {f'{stem}.py', 'last_checkpoint', '20260101_000000'})
    assert len(runs) == 1  # one timestamped folder: log + config copy
    logged = os.listdir(training / runs[0])
    assert f'{runs[0]}.log' in logged and f'{stem}.py' in logged


def test_fuse_conv_bn_writes_the_same_predictions(setup, tmp_path):
    """--fuse-conv-bn folds the BatchNorms (BN statistics and affine
    parameters made non-trivial here) and writes the same bitmasks and
    scores within 1e-4 as the plain run."""
    root, data, config, checkpoint = setup
    ckpt = torch.load(checkpoint, weights_only=True)
    generator = torch.Generator().manual_seed(5)
    changed = 0
    for key, value in ckpt['state_dict'].items():
        if '.bn' in key or 'norm' in key or '.downsample.1.' in key:
            if key.endswith('running_var') or key.endswith('weight'):
                value.uniform_(0.5, 1.5, generator=generator)
                changed += 1
            elif key.endswith('running_mean') or key.endswith('bias'):
                value.normal_(0, 0.1, generator=generator)
    assert changed > 20
    bn_ckpt = tmp_path / 'bn.pth'
    torch.save(ckpt, str(bn_ckpt))
    args = [config, str(bn_ckpt), '--img-dir', str(data / 'images'),
            '--work-dir', 'wd']
    plain = run(args + ['--format-dir', 'plain'], cwd=tmp_path)
    assert plain.returncode == 0, plain.stderr[-3000:]
    fused = run(args + ['--format-dir', 'fused', '--fuse-conv-bn'],
                cwd=tmp_path)
    assert fused.returncode == 0, fused.stderr[-3000:]
    assert '20 BatchNorm layers folded' in fused.stdout + fused.stderr
    assert 'folded' not in plain.stdout + plain.stderr
    plain_pngs, plain_frames = read_outputs(tmp_path / 'plain')
    fused_pngs, fused_frames = read_outputs(tmp_path / 'fused')
    assert sorted(fused_pngs) == sorted(plain_pngs) and len(plain_pngs) == 3
    for name, png in plain_pngs.items():
        assert png.any() and (fused_pngs[name] == png).all(), name
    for ours, theirs in zip(fused_frames, plain_frames):
        assert ours['name'] == theirs['name']
        assert len(ours['labels']) == len(theirs['labels']) > 0
        for a, b in zip(ours['labels'], theirs['labels']):
            assert a['category'] == b['category']
            assert a['score'] == pytest.approx(b['score'], abs=1e-4)


def test_emulated_tf32_rounds_the_convolutions(setup, one_process,
                                               tmp_path):
    """--emulate-tf32: every convolution of the run reads TF32-rounded
    inputs and weights (the scores move in their last digits, the files
    are complete); with --fuse-conv-bn, or a TF32 setting that is not a
    bool, a one-line error."""
    root, data, config, checkpoint = setup
    proc = run([config, checkpoint, '--img-dir', str(data / 'images'),
                '--format-dir', 'tf32', '--work-dir', 'wd',
                '--emulate-tf32', 'truncate'], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    said = [line for line in console(proc)
            if line.startswith('--emulate-tf32 truncate: ')]
    assert said and int(said[0].split()[2]) > 0, console(proc)
    plain_pngs, plain_frames = read_outputs(one_process[1])
    pngs, frames = read_outputs(tmp_path / 'tf32')
    assert sorted(pngs) == sorted(plain_pngs)
    scores = [[lab['score'] for lab in f['labels']] for f in frames]
    plain = [[lab['score'] for lab in f['labels']] for f in plain_frames]
    assert scores != plain  # rounded: not float32's numbers
    for ours, theirs in zip(scores, plain):
        assert len(ours) == len(theirs)
        assert ours == pytest.approx(theirs, abs=0.05)
    refused = run([config, checkpoint, '--img-dir', str(data / 'images'),
                   '--format-dir', 'x', '--emulate-tf32', 'nearest',
                   '--fuse-conv-bn'], cwd=tmp_path)
    assert refused.returncode == 2
    assert 'leave out --fuse-conv-bn' in refused.stderr
    one_line_error(
        run([config, checkpoint, '--img-dir', str(data / 'images'),
             '--format-dir', 'y', '--cfg-options', 'env_cfg.tf32=off'],
            cwd=tmp_path),
        "env_cfg.tf32='off': expected True, False or None")
    assert not (tmp_path / 'x').exists() and not (tmp_path / 'y').exists()


# test.py with a part of the package replaced (what cannot be arranged
# from outside: a full disk, the demo's checkpoint).
PATCHED = r'''
import runpy, sys
{patch}
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name='__main__')
'''


def run_patched(patch, args, cwd):
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONPATH=REPO)
    cmd = [sys.executable, '-c', PATCHED.format(patch=patch),
           osp.join(REPO, 'test.py')] + args
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


def console(proc):
    return (proc.stdout + proc.stderr).splitlines()


def test_eval_console_is_short(one_process):
    """The console of a run shows what a user reads: a header, the
    results; the environment, the config and the hooks are in the log
    file of --work-dir only."""
    proc, out_dir = one_process
    lines = console(proc)
    assert len(lines) <= 40, '\n'.join(lines)
    text = '\n'.join(lines)
    for noise in ('System environment', 'Config:', 'Hooks will be executed',
                  'loading annotations', 'Loads checkpoint', 'evaluating...'):
        assert noise not in text, noise
    assert lines[0].startswith('config: ') and 'OVERALL' in text
    log = [line for line in lines if line.startswith('log (environment')]
    assert len(log) == 1
    with open(log[0].split(': ', 1)[1]) as f:
        logged = f.read()
    assert 'System environment' in logged and 'Config:' in logged


def test_zoo_name_image_formats_and_a_six_image_console(setup, tmp_path):
    """`test.py mask_rcnn_r18_fpn_sample` (here pointed at the tiny model
    and its checkpoint, as the demo's would be) on a folder of 6 images in
    every format read, beside a text file: the name gives the config and
    the local checkpoint, every image gets its bitmask, the text file is
    named as skipped, and the console is a dozen lines; a misspelt name is
    answered with the closest ones."""
    root, data, config, checkpoint = setup
    images = tmp_path / 'images'
    images.mkdir()
    (images / 'sub').mkdir()
    (images / 'notes.txt').write_text('not an image')
    sources = sorted((data / 'images').iterdir())
    for k, (name, fmt) in enumerate((('x.webp', 'WEBP'), ('y.TIF', 'TIFF'),
                                      ('z.Bmp', 'BMP'))):
        Image.open(sources[k]).save(images / name, format=fmt)
        Image.open(sources[k]).save(images / sources[k].name)
    patch = ('from bdd100k_ins_seg.zoo import catalogue\n'
             f"catalogue.LOCAL_MODELS['mask_rcnn_r18_fpn_sample'] = "
             f"catalogue.LocalModel('mask_rcnn_r18_fpn_sample', {config!r}, "
             f"{checkpoint!r}, 'make demo')")
    proc = run_patched(patch, ['mask_rcnn_r18_fpn_sample', '--img-dir',
                               str(images), '--format-dir', 'out',
                               '--work-dir', 'wd'], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = console(proc)
    assert len(lines) <= 12, '\n'.join(lines)
    assert f'config: {config}' in lines
    assert f'checkpoint: {checkpoint}' in lines
    assert 'images: 6, output out' in lines
    skipped = [line for line in lines if 'skipped' in line]
    assert len(skipped) == 1 and skipped[0].endswith(
        f'{images}: 1 file skipped (notes.txt): not '
        'jpg/jpeg/png/bmp/webp/tif/tiff (any case)')
    stems = sorted(osp.splitext(n)[0] for n in os.listdir(images)
                   if n not in ('sub', 'notes.txt'))
    assert sorted(os.listdir(tmp_path / 'out' / 'bitmasks')) == [
        s + '.png' for s in stems]
    assert len(stems) == 6
    typo = run(['mask_rcnn_r18_fpn_sampel', '--img-dir', str(images),
                '--format-dir', 'o'], cwd=tmp_path)
    one_line_error(typo, 'config mask_rcnn_r18_fpn_sampel: not found, nor '
                   'a model name (closest: mask_rcnn_r18_fpn_sample')


def cfg_of(config, images=None):
    """The config test.py runs: the tiny one, or on an image folder."""
    from mmengine.config import Config
    cfg = Config.fromfile(config)
    if images is not None:
        cfg.test_dataloader.dataset = dict(
            type='BDD100KImageFolderDataset', data_root='',
            data_prefix=dict(img=str(images)), pipeline=[], test_mode=True)
    return cfg


def test_images_of_one_stem_are_refused_before_the_model(setup, tmp_path):
    """a.jpg and a.png would write one bitmask a.png: test.py's checks
    before the model is built refuse them, naming both, and write
    nothing."""
    from bdd100k_ins_seg.inference import preflight
    root, data, config, checkpoint = setup
    images = tmp_path / 'images'
    images.mkdir()
    source = sorted((data / 'images').iterdir())[0]
    Image.open(source).save(images / 'a.jpg')
    Image.open(source).save(images / 'a.png')
    with pytest.raises(preflight.PreflightError) as error:
        preflight.preflight(cfg_of(config, images), checkpoint, None,
                            str(tmp_path / 'out'), False)
    assert str(error.value) == (
        f'test images: {images / "a.jpg"} and {images / "a.png"} have the '
        'same stem: both predictions would be bitmasks/a.png; rename one')
    assert not (tmp_path / 'out').exists()


def test_eval_needs_a_prediction_for_every_gt_unless_asked(setup, tmp_path):
    """A GT folder with a bitmask of an image the run does not predict is
    refused before inference, saying how to score the others; with
    --only-predicted the run goes on (scored: see the full-disk test)."""
    from bdd100k_ins_seg.inference import preflight
    root, data, config, checkpoint = setup
    gt = tmp_path / 'gt'
    gt.mkdir()
    for path in (data / 'gt').iterdir():
        (gt / path.name).write_bytes(path.read_bytes())
    (gt / 'other.png').write_bytes(path.read_bytes())
    with pytest.raises(preflight.PreflightError) as error:
        preflight.preflight(cfg_of(config), checkpoint, str(gt), None,
                            False)
    assert str(error.value) == (
        f'GT bitmask folder {gt}: 1 of its 4 bitmasks has no image in this '
        'run, e.g. other.png: to score the 3 images of the run only, add '
        '--only-predicted')
    said = []
    preflight.preflight(cfg_of(config), checkpoint, str(gt), None, False,
                        only_predicted=True, say=said.append)
    assert said == [f'3, GT {gt}']
    usage = run([config, checkpoint, '--format-only', '--format-dir', 'o',
                 '--only-predicted'], cwd=tmp_path)
    assert usage.returncode == 2
    assert '--only-predicted chooses the GT to score' in usage.stderr


FULL_DISK = '''
import errno, os
import bdd100k_ins_seg.inference.writer as writer
real = writer.atomic_write
def atomic_write(path, data, **kwargs):
    if atomic_write.calls:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)
    atomic_write.calls += 1
    real(path, data, **kwargs)
atomic_write.calls = 0
writer.atomic_write = atomic_write
'''


def test_full_disk_is_one_line_and_resume_completes(setup, one_process,
                                                    tmp_path):
    """The writer threads meet a full disk (ENOSPC) after one bitmask: one
    line names the folder and says what to do; --resume then completes
    the folder (here scoring the 3 images of a 4-bitmask GT folder with
    --only-predicted) with the files of an uninterrupted run."""
    root, data, config, checkpoint = setup
    gt = tmp_path / 'gt'
    gt.mkdir()
    for path in (data / 'gt').iterdir():
        (gt / path.name).write_bytes(path.read_bytes())
    (gt / 'other.png').write_bytes(path.read_bytes())
    args = [config, checkpoint, '--format-dir', 'full', '--eval',
            '--gt-dir', str(gt), '--only-predicted']
    full = run_patched(FULL_DISK, args, cwd=tmp_path)
    one_line_error(full, 'test.py: error: output folder full: the disk is '
                   'full (No space left on device): free space, then run '
                   'the same command with --resume; the images written so '
                   'far are kept')
    assert len(console(full)) <= 6, full.stdout + full.stderr
    assert os.listdir(tmp_path / 'full' / 'bitmasks')
    assert not (tmp_path / 'full' / 'score.json').exists()
    resumed = run(args + ['--resume'], cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert 'scoring 3 of the 4 GT bitmasks' in resumed.stdout
    pngs, frames = read_outputs(tmp_path / 'full')
    expected_pngs, expected_frames = read_outputs(one_process[1])
    assert sorted(pngs) == sorted(expected_pngs) and len(pngs) == 3
    assert all((pngs[n] == expected_pngs[n]).all() for n in pngs)
    assert frames == expected_frames


HOLD_LOCK = '''
import os, sys, time
from bdd100k_ins_seg.inference import folder_lock
folder_lock.lock(sys.argv[1])
os.makedirs(os.path.join(sys.argv[1], '.parts'))  # as a writer does
print('locked', flush=True)
time.sleep(300)
'''


def test_folder_in_use_is_refused_naming_the_process(setup, tmp_path):
    """While a process writes into --format-dir (holds its lock), test.py's
    checks refuse another run into it as in use (not as an interrupted
    run), naming that process; when it ends, however it ends, the lock is
    gone: the folder is an interrupted run, which --resume continues,
    holding the lock until it ends."""
    from bdd100k_ins_seg.inference import folder_lock, preflight
    root, data, config, checkpoint = setup
    out = tmp_path / 'out'
    cfg = cfg_of(config, data / 'images')
    env = dict(os.environ, PYTHONPATH=REPO)
    holder = subprocess.Popen(
        [sys.executable, '-c', HOLD_LOCK, str(out), 'test.py'], env=env,
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == 'locked'
        with pytest.raises(folder_lock.FolderInUseError) as error:
            preflight.preflight(cfg, checkpoint, None, str(out), False)
        message = str(error.value)
        assert message.startswith(
            f'output folder {out}: is in use by process {holder.pid} (')
        # the holder's command line, cut to 80 characters where longer
        shown = message.split(' (', 1)[1].split(') since ', 1)[0]
        command = f'-c {out} test.py'
        assert shown == command if len(command) <= 80 else (
            len(shown) == 80 and command.startswith(shown[:-3])
            and shown.endswith('...'))
        assert message.endswith(': wait for it to end, or write into '
                                'another --format-dir')
    finally:
        holder.kill()  # no clean-up: the kernel releases the lock
        holder.wait()
    assert (out / folder_lock.LOCK_FILE).exists()
    assert folder_lock.holder(str(out)) is None
    with pytest.raises(preflight.PreflightError, match='holds an '
                       'interrupted run: add --resume'):
        preflight.preflight(cfg, checkpoint, None, str(out), False)
    try:
        preflight.preflight(cfg, checkpoint, None, str(out), True)
        info = folder_lock.holder(str(out))  # this process, now
        assert info['pid'] == os.getpid()
    finally:
        folder_lock.unlock(str(out))
    assert not (out / folder_lock.LOCK_FILE).exists()


def test_ranks_of_one_job_share_the_folder_lock(tmp_path, monkeypatch):
    """Rank 0 takes the lock; another rank of its job (same rendezvous)
    goes on; a rank of another job is refused."""
    from bdd100k_ins_seg.inference import folder_lock
    out = str(tmp_path / 'out')
    monkeypatch.setenv('MASTER_ADDR', '127.0.0.1')
    monkeypatch.setenv('MASTER_PORT', '29999')
    monkeypatch.setenv('RANK', '0')
    folder_lock.lock(out)
    try:
        monkeypatch.setenv('RANK', '1')
        folder_lock.lock(out)  # rank 1 takes nothing: rank 0 holds it
        held = folder_lock._HELD.pop(out)  # as seen from another process
        try:
            folder_lock.check_not_in_use(out)
            monkeypatch.setenv('MASTER_PORT', '29998')  # another job
            with pytest.raises(folder_lock.FolderInUseError,
                               match=f'process {os.getpid()} '):
                folder_lock.check_not_in_use(out)
        finally:
            folder_lock._HELD[out] = held
    finally:
        folder_lock.unlock(out)
