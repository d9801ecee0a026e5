"""tools/video_demo.py on a short synthetic mp4 with a tiny random Mask
R-CNN: the drawn video keeps the input's size, frame count and frame rate,
its frames are the predictions drawn as vis.py draws them, and
--format-dir writes the official bitmasks and score.json under BDD100K's
video frame names; a file OpenCV cannot open stops with one line."""
import contextlib
import io
import json
import os
import os.path as osp
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

import bdd100k_ins_seg.plugin  # noqa: F401  (mmcv ops before mmdet)
from scripts import load_script
from test_test_script import BASES, TINY_CONFIG

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
SIZE = (160, 96)  # width, height
FPS = 7


def run(args, cwd):
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONPATH=REPO)
    return subprocess.run(
        [sys.executable, osp.join(REPO, 'tools', 'video_demo.py')] + args,
        cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def read_frames(path):
    capture = cv2.VideoCapture(str(path))
    info = (int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)),
            int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT)),
            capture.get(cv2.CAP_PROP_FPS))
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(frame)
    capture.release()
    return info, frames


@pytest.fixture(scope='module')
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp('video')
    rng = np.random.default_rng(0)
    video = root / 'drive.mp4'
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*'mp4v'),
                             FPS, SIZE)
    for k in range(5):  # a road with cars moving right
        frame = np.full((SIZE[1], SIZE[0], 3), 90, np.uint8)
        frame[60:] = 60
        for j in range(3):
            x = 10 + 45 * j + 4 * k
            frame[45:70, x:x + 30] = rng.integers(40, 220, 3)
        writer.write(frame)
    writer.release()
    config = root / 'tiny_mask_rcnn.py'
    config.write_text(TINY_CONFIG.format(bases=BASES, data=root))
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
    # In this process: torch and mmdet are loaded already.
    tool = load_script('tools/video_demo.py', 'video_demo_tool')
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        tool.main([str(video), str(config), str(checkpoint), '--out',
                   str(root / 'out' / 'drawn.mp4'), '--score-thr', '0',
                   '--batch-size', '2', '--format-dir', str(root / 'fmt'),
                   '--device', 'cpu'])
    return root, video, (out.getvalue(), err.getvalue())


def test_video_keeps_size_frames_and_rate(setup):
    root, video, (stdout, stderr) = setup
    (width, height, fps), frames = read_frames(root / 'out' / 'drawn.mp4')
    _, inputs = read_frames(video)
    assert (width, height) == SIZE and len(frames) == len(inputs) == 5
    assert fps == pytest.approx(FPS)
    assert '5 frames (160x96, 7 fps)' in stdout
    assert 'frame/s' in stderr  # the progress bar
    assert sorted(os.listdir(root / 'out')) == ['drawn.mp4']  # no temp


def test_frames_are_the_predictions_drawn_like_vis(setup):
    """Each output frame is (up to mp4 compression) the frame's bitmask
    drawn over it by the overlay vis.py uses."""
    from bdd100k_ins_seg.inference.video import draw
    root, video, _ = setup
    _, inputs = read_frames(video)
    _, outputs = read_frames(root / 'out' / 'drawn.mp4')
    with open(root / 'fmt' / 'score.json') as f:
        frames = json.load(f)
    assert [f['name'] for f in frames] == [
        f'drive-{k:07d}.jpg' for k in range(1, 6)]
    assert sorted(os.listdir(root / 'fmt' / 'bitmasks')) == [
        f'drive-{k:07d}.png' for k in range(1, 6)]
    changed = 0
    for frame, drawn, labels in zip(inputs, outputs, frames):
        stem = labels['name'][:-len('.jpg')]
        bitmask = np.asarray(Image.open(
            root / 'fmt' / 'bitmasks' / f'{stem}.png'))
        assert labels['labels'], stem  # the tiny model's every prediction
        rgb = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
        expected = draw(rgb, bitmask, labels['labels'], 0.0)
        got = cv2.cvtColor(drawn, cv2.COLOR_BGR2RGB).astype(int)
        # mp4v compression blurs the outlines and captions: the drawn frame
        # is much closer to the expected drawing than to the plain frame
        assert np.abs(got - expected).mean() < 0.5 * np.abs(got - rgb).mean()
        changed += np.abs(expected.astype(int) - rgb).mean() > 6
    assert changed == 5


def test_unreadable_video_is_one_line(setup, tmp_path):
    root, video, _ = setup
    bad = tmp_path / 'broken.mp4'
    bad.write_bytes(b'not a video')
    proc = run([str(bad), str(root / 'tiny_mask_rcnn.py'),
                str(root / 'tiny.pth'), '--out', 'x.mp4'], cwd=tmp_path)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        f'video_demo.py: error: video {bad}: OpenCV cannot open it (not a '
        'video, or a codec it lacks)']
    assert not osp.exists(tmp_path / 'x.mp4')
