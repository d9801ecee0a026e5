"""Faults during test.py: SIGKILL and SIGTERM at random points (one process
and two gloo processes), then --resume, compared with an uninterrupted run;
checks before inference (output folder, GT, images, another run's folder)."""
import json
import os
import os.path as osp
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from test_evaluation import make_scenes
from test_test_script import REPO, one_line_error, read_outputs

TESTS = osp.dirname(osp.abspath(__file__))
NUM_IMAGES = 8

# Every image waits 0.2 s in the pipeline (tests/slow_transform.py) so that
# the runs below can be stopped half-way.
SLOW = """
_base_ = '{base}'
custom_imports = dict(imports=['bdd100k_ins_seg', 'slow_transform'],
                      allow_failed_imports=False)
unlabeled_test_pipeline = [
    dict(type='WaitForTest', seconds=0.2),
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(160, 96), keep_ratio=True),
    dict(type='PackDetInputs', meta_keys=('img_id', 'img_path', 'ori_shape',
                                          'img_shape', 'scale_factor')),
]
"""


@pytest.fixture(scope='module')
def setup(tmp_path_factory):
    """A tiny random Mask R-CNN (tests/test_test_script.py's), 8 images."""
    import torch

    from test_test_script import TINY_CONFIG, BASES
    root = tmp_path_factory.mktemp('faults')
    data = root / 'data'
    make_scenes(str(data), num_images=NUM_IMAGES, size=(96, 64), seed=5,
                per_image=3)
    (data / 'coco.json').write_text('{}')  # unused: --img-dir runs
    config = root / 'tiny.py'
    config.write_text(TINY_CONFIG.format(bases=BASES, data=data))
    slow = root / 'slow.py'
    slow.write_text(SLOW.format(base=config))

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
    reference = run([str(config), str(checkpoint), '--img-dir',
                     str(data / 'images'), '--format-dir', 'ref',
                     '--work-dir', 'wd'], cwd=root)
    assert reference.returncode == 0, reference.stderr[-3000:]
    return root, data, str(slow), str(checkpoint)


def args_for(setup, out):
    root, data, config, checkpoint = setup
    return [config, checkpoint, '--img-dir', str(data / 'images'),
            '--format-dir', out, '--work-dir', 'wd']


def command(args, processes):
    launcher = []
    if processes > 1:
        launcher = ['-m', 'torch.distributed.run', '--nproc_per_node',
                    str(processes), '--master_port',
                    str(29700 + random.randrange(200))]
        args = args + ['--launcher', 'pytorch']
    return [sys.executable] + launcher + [osp.join(REPO, 'test.py')] + args


def env():
    return dict(os.environ, OMP_NUM_THREADS='1',
                PYTHONPATH=os.pathsep.join([REPO, TESTS]))


def run(args, cwd, processes=1):
    return subprocess.run(command(args, processes), cwd=cwd, env=env(),
                          capture_output=True, text=True, timeout=300)


def pngs_in(out):
    folder = osp.join(out, 'bitmasks')
    return [n for n in os.listdir(folder)
            if n.endswith('.png')] if osp.isdir(folder) else []


def process_tree(pid):
    """``pid`` and its descendants (torchrun starts its workers in their own
    sessions, so a process group does not hold them)."""
    children = {}
    for entry in os.listdir('/proc'):
        if entry.isdigit():
            try:
                with open(f'/proc/{entry}/stat') as f:
                    ppid = int(f.read().rsplit(')', 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    tree, todo = [], [pid]
    while todo:
        tree.append(todo.pop())
        todo.extend(children.get(tree[-1], []))
    return tree


def stop_after(args, cwd, processes, sig, at_least):
    """Start test.py, wait until ``at_least`` PNGs are written, send
    ``sig`` (to the launcher and its workers as a scheduler would), wait."""
    out = osp.join(cwd, args[args.index('--format-dir') + 1])
    proc = subprocess.Popen(command(args, processes), cwd=cwd, env=env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    deadline = time.monotonic() + 240
    while len(pngs_in(out)) < at_least:
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() < deadline, 'no progress'
        time.sleep(0.02)
    if sig == signal.SIGKILL:  # the node is lost: every process at once
        for pid in process_tree(proc.pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    else:  # torchrun passes SIGTERM on to its workers
        proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode != 0, (sig, stderr[-3000:])
    assert not osp.exists(osp.join(out, 'score.json')), (sig, stderr[-3000:])
    return stderr


def resumed(args, cwd, processes):
    proc = run(args + ['--resume'], cwd, processes)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def assert_same_as_reference(root, out):
    ref_pngs, ref_frames = read_outputs(root / 'ref')
    pngs, frames = read_outputs(out)
    assert len(ref_pngs) == NUM_IMAGES and sorted(pngs) == sorted(ref_pngs)
    for name, png in ref_pngs.items():
        np.testing.assert_array_equal(pngs[name], png)
    assert frames == ref_frames
    assert not osp.exists(osp.join(out, '.parts'))


def refused_as_another_run(setup, args):
    import torch
    root, data, config, checkpoint = setup
    other = root / 'other.pth'
    state = torch.load(checkpoint, weights_only=True)
    key = next(iter(state['state_dict']))
    state['state_dict'][key] = state['state_dict'][key] + 1
    torch.save(state, str(other))
    one_line_error(run([config, str(other)] + args[2:] + ['--resume'],
                       cwd=root), 'another checkpoint')
    fewer = root / 'fewer'
    fewer.mkdir()
    for name in sorted(os.listdir(data / 'images'))[:3]:
        os.link(data / 'images' / name, fewer / name)
    img_dir = args.index('--img-dir') + 1
    one_line_error(run(args[:img_dir] + [str(fewer)] + args[img_dir + 1:]
                       + ['--resume'], cwd=root), 'another image list')


@pytest.mark.parametrize('processes', [1, 2])
def test_killed_and_terminated_runs_resume_to_the_same_files(setup,
                                                             processes):
    root = setup[0]
    rng = random.Random(processes)
    out = f'out{processes}'
    args = args_for(setup, out)
    # SIGKILL (a lost node) after a few images.
    stop_after(args, root, processes, signal.SIGKILL, rng.randint(2, 3))
    written = len(pngs_in(root / out))
    assert 0 < written < NUM_IMAGES
    if processes == 1:
        # Without --resume, or with another checkpoint or image set, the
        # folder is refused, untouched.
        one_line_error(run(args, cwd=root), '--resume')
        refused_as_another_run(setup, args)
        assert len(pngs_in(root / out)) == written
    # SIGTERM (preemption) of the resumed run: what was inferred is
    # flushed, the run exits non-zero and says how to continue.
    stderr = stop_after(args + ['--resume'], root, processes,
                        signal.SIGTERM, written + 2)
    ours = [line for line in stderr.splitlines()
            if line.startswith('test.py: error: interrupted')]
    assert len(ours) == processes and '--resume' in ours[0], stderr[-2000:]
    if processes == 1:  # (torchrun adds its own traceback)
        assert 'Traceback' not in stderr
    lines = [line for part in os.listdir(root / out / '.parts')
             for line in open(root / out / '.parts' / part)]
    done = len({json.loads(line)['name'] for line in lines})
    assert done >= written + 2 and done == len(pngs_in(root / out))
    # The last resume infers only what is missing; same files as one run.
    proc = resumed(args, root, processes)
    assert (f'{done} of {NUM_IMAGES} images done, {NUM_IMAGES - done} to '
            'infer') in proc.stdout
    assert_same_as_reference(root, root / out)
    if processes > 1:
        return
    # A complete folder resumed: nothing to infer, nothing changes.
    proc = resumed(args, root, processes)
    assert f'{NUM_IMAGES} of {NUM_IMAGES} images done, 0' in proc.stdout
    assert_same_as_reference(root, root / out)


def test_checks_before_inference(setup, tmp_path):
    """Each a one-line error naming the thing, before the model is built,
    with nothing written."""
    root, data, config, checkpoint = setup
    base = [config, checkpoint, '--work-dir', str(tmp_path / 'wd')]
    # An output folder that cannot be created (a file on its path).
    blocker = tmp_path / 'file'
    blocker.write_text('x')
    one_line_error(run(base + ['--img-dir', str(data / 'images'),
                               '--format-dir', str(blocker / 'out')],
                       cwd=tmp_path), f'output folder {blocker / "out"}')
    # A corrupt image, named.
    images = tmp_path / 'images'
    images.mkdir()
    for name in sorted(os.listdir(data / 'images'))[:2]:
        os.link(data / 'images' / name, images / name)
    (images / 'broken.jpg').write_bytes(b'\x00not a jpeg at all' * 10)
    one_line_error(run(base + ['--img-dir', str(images), '--format-dir',
                               str(tmp_path / 'o1')], cwd=tmp_path),
                   str(images / 'broken.jpg'))
    # --eval with a GT folder that misses one image's bitmask: every rank
    # stops before inference.
    gt = tmp_path / 'gt'
    gt.mkdir()
    gts = sorted(os.listdir(data / 'gt'))
    for name in gts[1:]:
        os.link(data / 'gt' / name, gt / name)
    coco = subprocess.run(
        [sys.executable, osp.join(REPO, 'tools', 'to_coco.py'), '-i',
         str(data / 'gt'), '-o', str(tmp_path / 'coco.json'), '--nproc',
         '1'], capture_output=True, text=True)
    assert coco.returncode == 0, coco.stderr[-2000:]
    eval_args = base + [
        '--eval', '--gt-dir', str(gt), '--format-dir', str(tmp_path / 'o2'),
        '--cfg-options', f'test_dataloader.dataset.ann_file='
        f'{tmp_path / "coco.json"}']
    start = time.monotonic()
    proc = run(eval_args, tmp_path, 2)
    assert time.monotonic() - start < 120
    assert proc.returncode != 0
    assert f'no bitmask for 1 of the {NUM_IMAGES} images, e.g. ' \
        f'{gts[0]}' in proc.stderr
    for name in ('o1', 'o2', 'wd'):
        assert not (tmp_path / name).exists(), name


def test_image_that_fails_to_decode_is_named(setup, tmp_path):
    """A PNG cut short is named before inference, nothing written; one whose
    header and end are fine but whose pixel data are damaged is found when
    the data loader decodes it, named in one line."""
    root, data, config, checkpoint = setup
    images = tmp_path / 'images'
    images.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (64, 96, 3), np.uint8)).save(
        images / 'a.png')
    whole = (images / 'a.png').read_bytes()
    (images / 'cut.png').write_bytes(whole[:len(whole) // 2])
    args = [config, checkpoint, '--img-dir', str(images), '--format-dir',
            str(tmp_path / 'out'), '--work-dir', str(tmp_path / 'wd')]
    proc = run(args, cwd=tmp_path)
    one_line_error(proc, f'image {images / "cut.png"}: cut short: no PNG '
                   'IEND chunk')
    assert not (tmp_path / 'out').exists()
    damaged = bytearray(whole)
    middle = len(whole) // 3
    damaged[middle:middle + 200] = bytes(b ^ 0x5a for b in
                                         damaged[middle:middle + 200])
    (images / 'cut.png').write_bytes(bytes(damaged))
    one_line_error(run(args, cwd=tmp_path), str(images / 'cut.png'))
    assert not (tmp_path / 'out' / 'score.json').exists()


def test_resume_refuses_a_folder_of_the_other_forward(tmp_path):
    """A folder written with the plain forward is not resumed with
    --fuse-conv-bn (or the other way): the outputs differ in the last
    digits. Without the flag the manifest is what it always was."""
    from mmengine.config import Config

    from bdd100k_ins_seg.inference import preflight as inference
    cfg = Config(dict(model=dict(type='MaskRCNN')))
    checkpoint = tmp_path / 'model.pth'
    checkpoint.write_bytes(b'weights')
    paths = ['a/b1.jpg', 'a/b2.jpg']
    plain = inference.make_manifest(cfg, str(checkpoint), paths)
    fused = inference.make_manifest(cfg, str(checkpoint), paths,
                                    fuse_conv_bn=True)
    assert 'fuse_conv_bn' not in plain and fused['fuse_conv_bn'] is True
    assert {k: v for k, v in fused.items() if k != 'fuse_conv_bn'} == plain
    for old, new in [(plain, fused), (fused, plain)]:
        out = tmp_path / f'out{len(old)}'
        out.mkdir()
        (out / inference.MANIFEST).write_text(json.dumps(old))
        with pytest.raises(inference.PreflightError,
                           match='another forward .--fuse-conv-bn.'):
            inference.prepare_output(str(out), new, resume=True)
        assert inference.prepare_output(str(out), old, resume=True) == set()


@pytest.mark.parametrize('key, old', [('test_evaluator.score_thr', 0.0),
                                      ('model.test_cfg.rcnn.score_thr', 0.05)])
def test_resume_refuses_another_score_threshold(tmp_path, key, old):
    """A folder written with one score threshold is not resumed with
    another, given by --cfg-options to the metric or to the model's
    test_cfg (the folder would hold predictions of two thresholds); the
    error names it. The same threshold resumes, and a manifest that
    predates the recorded thresholds is judged by its config fingerprint."""
    import re

    from mmengine.config import Config

    from bdd100k_ins_seg.cli import config_options
    from bdd100k_ins_seg.inference import preflight as inference

    checkpoint = tmp_path / 'model.pth'
    checkpoint.write_bytes(b'weights')
    paths = ['a/b1.jpg', 'a/b2.jpg']

    def manifest(*options):  # as test.py reads --cfg-options
        cfg = Config(dict(
            model=dict(type='MaskRCNN', test_cfg=dict(
                rpn=dict(nms_pre=1000),
                rcnn=dict(score_thr=0.05, max_per_img=100))),
            test_evaluator=dict(type='BDD100KInsSegMetric')))
        if options:
            cfg.merge_from_dict(config_options(list(options)))
        return inference.make_manifest(cfg, str(checkpoint), paths)

    written = manifest()
    other = manifest(f'{key}=0.3')
    out = tmp_path / 'out'
    out.mkdir()
    (out / inference.MANIFEST).write_text(json.dumps(written))
    with pytest.raises(inference.PreflightError, match=re.escape(
            f'another score threshold ({key} {old} != 0.3)')):
        inference.prepare_output(str(out), other, resume=True)
    for same in (manifest(), manifest(f'{key}={old}')):
        assert inference.prepare_output(str(out), same, resume=True) == set()
    older = {k: v for k, v in written.items() if k != 'score_thr'}
    (out / inference.MANIFEST).write_text(json.dumps(older))
    with pytest.raises(inference.PreflightError, match='another config'):
        inference.prepare_output(str(out), other, resume=True)
    assert inference.prepare_output(str(out), manifest(), resume=True) == set()


def test_resume_with_another_score_threshold_is_refused(setup):
    """test.py end to end: the finished folder of the reference run,
    resumed with another metric threshold, is refused and left as it was."""
    root, data, _, checkpoint = setup
    before = {name: (root / 'ref' / name).stat().st_mtime_ns
              for name in os.listdir(root / 'ref')}
    one_line_error(
        run([str(root / 'tiny.py'), checkpoint, '--img-dir',
             str(data / 'images'), '--format-dir', 'ref', '--work-dir', 'wd',
             '--resume', '--cfg-options', 'test_evaluator.score_thr=0.3'],
            cwd=root),
        'another score threshold (test_evaluator.score_thr 0.0 != 0.3)')
    assert {name: (root / 'ref' / name).stat().st_mtime_ns
            for name in os.listdir(root / 'ref')} == before
