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

import bdd100k_ins_seg  # noqa: F401  (mmcv ops before mmdet)
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
