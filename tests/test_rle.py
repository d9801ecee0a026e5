"""The RLE format both ways: predictions converted from the bitmasks equal
the official conversion (``bdd100k.label.to_rle``) pixel for pixel, the
evaluator on RLE json gives the official result json, the metric writes and
scores RLE, and the submission zip holds what the server takes."""
import json
import logging
import os
import os.path as osp
import subprocess
import sys
import zipfile

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from bdd100k.common.logger import logger as bdd100k_logger

from bdd100k_ins_seg.benchmark.synthetic import write_case
from bdd100k_ins_seg.formats import rle

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))


def coco_decode(rle_dict):
    """pycocotools' decoding (its numpy-2 copy warning is its own)."""
    import warnings
    with warnings.catch_warnings():
        warnings.filterwarnings('ignore', '__array__ implementation',
                                DeprecationWarning)
        return mask_utils.decode(rle_dict).astype(bool)


@pytest.fixture(autouse=True)
def quiet_toolkit():
    level = bdd100k_logger.level
    bdd100k_logger.setLevel(logging.WARNING)
    yield
    bdd100k_logger.setLevel(level)


def with_ids(score_file):
    """The score file's frames with the label ids the official converter
    needs (test.py's score.json has them; the synthetic one has not)."""
    with open(score_file) as f:
        frames = json.load(f)
    n = 0
    for frame in frames:
        for label in frame.get('labels') or []:
            n += 1
            label['id'] = str(n)
    return frames


def rle_case(root, seed, num_images=3):
    """A random case whose predictions are all of the 8 classes (the
    synthetic GT has a 9th id, which the official converter cannot name:
    it stops with an IndexError on a prediction of it)."""
    case = write_case(root, seed, num_images=num_images)
    for name in os.listdir(case['pred_dir']):
        path = osp.join(case['pred_dir'], name)
        array = np.array(Image.open(path))
        array[..., 0] = np.minimum(array[..., 0], 8)
        Image.fromarray(array).save(path)
    return case


def official_rle_frames(pred_dir, frames):
    """``bdd100k.label.to_rle``'s ins_seg conversion, in-process."""
    from bdd100k.common.utils import load_bdd100k_config
    from bdd100k.label.to_rle import insseg_to_rle
    from scalabel.label.io import parse
    from scalabel.label.utils import get_leaf_categories
    categories = get_leaf_categories(
        load_bdd100k_config('ins_seg').scalabel.categories)
    return [insseg_to_rle(parse(dict(f)), pred_dir, categories)
            for f in frames]


def test_prediction_rles_are_the_official_conversion(tmp_path):
    """Random folders (overlaps resolved by score, tied scores, index gaps,
    listed indices without pixels, images without predictions): the same
    labels, ids, scores and RLE strings, and the same pixels decoded."""
    labels_seen = 0
    for seed in range(6):
        case = rle_case(str(tmp_path / str(seed)), seed)
        frames = with_ids(case['score_file'])
        ours = rle.prediction_frames(case['pred_dir'], frames)
        official = official_rle_frames(case['pred_dir'], frames)
        assert [f['name'] for f in ours] == [f.name for f in official]
        for mine, theirs in zip(ours, official):
            theirs_labels = theirs.labels or []
            assert len(mine['labels']) == len(theirs_labels), mine['name']
            for a, b in zip(mine['labels'], theirs_labels):
                assert (a['id'], a['category'], a['score']) == (
                    b.id, b.category, b.score)
                assert a['rle'] == dict(counts=b.rle.counts,
                                        size=list(b.rle.size))
                theirs_mask = coco_decode(dict(counts=b.rle.counts,
                                               size=list(b.rle.size)))
                assert np.array_equal(coco_decode(a['rle']), theirs_mask)
                assert np.array_equal(rle.decode(a['rle']), theirs_mask)
                labels_seen += 1
    assert labels_seen > 50


def test_each_label_is_the_pixels_it_owns_in_the_bitmask(tmp_path):
    case = rle_case(str(tmp_path), 11, num_images=2)
    frames = with_ids(case['score_file'])
    for frame in rle.prediction_frames(case['pred_dir'], frames):
        array = np.asarray(Image.open(osp.join(
            case['pred_dir'], frame['name'][:-4] + '.png')))
        ids = (array[..., 2].astype(int) << 8) | array[..., 3]
        union = np.zeros(ids.shape, bool)
        for label in frame['labels']:
            mask = coco_decode(label['rle'])
            assert not (mask & union).any()  # non-overlapping
            assert len(np.unique(ids[mask])) == 1 and ids[mask][0] > 0
            assert mask.sum() == (ids == ids[mask][0]).sum()
            union |= mask


def test_gt_rles_paint_back_into_the_same_bitmask(tmp_path):
    case = write_case(str(tmp_path), 5, num_images=2)
    for frame in rle.gt_frames(case['gt_dir']):
        array = np.asarray(Image.open(osp.join(
            case['gt_dir'], frame['name'][:-4] + '.png')))
        painted, _ = rle.rasterize(frame['labels'], *array.shape[:2],
                                   gt=True)
        known = (array[..., 0] >= 1) & (array[..., 0] <= 8)
        assert np.array_equal(painted[..., 0], np.where(known, array[..., 0],
                                                        0))
        assert np.array_equal(painted[..., 1][known], array[..., 1][known])
        for label in frame['labels']:
            mask = coco_decode(label['rle'])
            ids = (array[..., 2].astype(int) << 8) | array[..., 3]
            assert np.array_equal(mask, ids == int(label['id']))


def official_rle_json(gt_file, pred_file):
    """What ``python -m bdd100k.eval.run -t ins_seg -g GT.json -r
    PRED.json --nproc 1 --out-file F`` writes, in-process."""
    from bdd100k.common.utils import load_bdd100k_config
    from bdd100k.eval.run import _load_frames, run_rle
    config = load_bdd100k_config('ins_seg')
    gts, preds = _load_frames(gt_file, pred_file, config, 1)
    return json.dumps(dict(run_rle(config, 'ins_seg', gts, preds, nproc=1)),
                      indent=2)


def test_evaluator_on_rle_json_is_the_official_json(tmp_path, capsys):
    from bdd100k_ins_seg import eval as evaluator
    aps = []
    for seed in (2, 3, 7):
        root = tmp_path / str(seed)
        case = rle_case(str(root), seed)
        gt_file, pred_file = str(root / 'gt.json'), str(root / 'pred.json')
        rle.write_rle_file(gt_file, rle.gt_frames(case['gt_dir']))
        rle.write_rle_file(pred_file, rle.prediction_frames(
            case['pred_dir'], with_ids(case['score_file'])))
        out = root / 'result.json'
        evaluator.main(['-g', gt_file, '-r', pred_file, '--out-file',
                        str(out), '--nproc', '2', '-q'])
        expected = official_rle_json(gt_file, pred_file)
        assert out.read_text() == expected, f'seed {seed}'
        aps.append(json.loads(expected)['AP'][1]['OVERALL'])
    assert any(ap > 5 for ap in aps)  # not degenerate
    capsys.readouterr()


def test_evaluator_rle_input_errors(tmp_path):
    bad = tmp_path / 'bad.json'
    bad.write_text('{"frames": [{"name": "a.jpg", "labels": [{"id": "1"}]}]}')
    env = dict(os.environ, PYTHONPATH=REPO)
    cases = [
        (['-g', str(bad), '-r', str(bad)],
         f'--gt {bad}: frame a.jpg: label 0 has no "rle"'),
        (['-g', str(bad), '-r', str(tmp_path)],
         f'--result: not an RLE .json file: {tmp_path}'),
        (['-g', str(bad), '-r', str(bad), '--score-file', 's.json'],
         '--score-file: RLE json holds its scores'),
    ]
    for args, message in cases:
        proc = subprocess.run(
            [sys.executable, '-m', 'bdd100k_ins_seg.eval', *args],
            capture_output=True, text=True, env=env, cwd=str(tmp_path))
        assert proc.returncode == 1
        assert proc.stderr.strip().splitlines()[-1].startswith(
            f'python -m bdd100k_ins_seg.eval: error: {message}'), proc.stderr


@pytest.fixture(scope='module')
def scenes(tmp_path_factory):
    from test_evaluation import make_scenes
    root = str(tmp_path_factory.mktemp('rle_scenes'))
    scenes = make_scenes(root, num_images=3, seed=4)
    gt_file = osp.join(root, 'gt.json')
    rle.write_rle_file(gt_file, rle.gt_frames(osp.join(root, 'gt')))
    return root, scenes, gt_file


def samples_of(scenes):
    from test_evaluation import data_sample
    out = []
    for k, scene in enumerate(scenes):
        masks = scene['masks'][:-1]  # one miss per image
        labels = scene['labels'][:-1].copy()
        labels[0] = labels[0] % 8 + 1  # one wrong class
        out.append(data_sample(scene, masks, labels))
    return out


@pytest.mark.parametrize('out_format', ['rle', 'both'])
def test_metric_scores_rle_gt_and_writes_rles(scenes, tmp_path, out_format):
    """``gt_file=``: the official RLE result of the run's own rles.json;
    ``out_format``: rles.json made from the bitmasks (``rle``: without
    them), equal to the official conversion of the bitmasks."""
    from bdd100k_ins_seg.plugin.metric import BDD100KInsSegMetric
    root, scene_list, gt_file = scenes
    out = tmp_path / 'out'
    metric = BDD100KInsSegMetric(gt_file=gt_file, outfile_prefix=str(out),
                                 out_format=out_format, nproc=1)
    metric.process({}, samples_of(scene_list))
    metrics = metric.evaluate(len(scene_list))
    rle_file = str(out / rle.RLE_FILE)
    assert json.dumps(metric.last_result, indent=2) == official_rle_json(
        gt_file, rle_file)
    assert metrics['bdd100k/segm_AP'] == metric.last_result['AP'][1][
        'OVERALL']
    assert 0 < metrics['bdd100k/segm_AP'] < 100
    names = sorted(os.listdir(out))
    if out_format == 'rle':
        assert rle.RLE_FILE in names
        assert 'bitmasks' not in names and 'score.json' not in names
        return
    assert {'bitmasks', 'score.json', rle.RLE_FILE} <= set(names)
    with open(out / 'score.json') as f:
        frames = json.load(f)
    official = official_rle_frames(str(out / 'bitmasks'), frames)
    written = rle.read_rle_file(rle_file)
    assert [[(lb['id'], lb['category'], lb['score'], lb['rle'])
             for lb in f['labels']] for f in written] == [
        [(lb.id, lb.category, lb.score,
          dict(counts=lb.rle.counts, size=list(lb.rle.size)))
         for lb in f.labels or []] for f in official]


def test_metric_per_class_ap(scenes, tmp_path):
    from test_evaluation import run_metric
    root, scene_list, _ = scenes
    metric, metrics = run_metric(samples_of(scene_list),
                                 osp.join(root, 'gt'))
    per_class = {k.split('segm_AP_')[1]: v for k, v in metrics.items()
                 if '/segm_AP_' in k}
    official = {k: v for k, v in metric.last_result['AP'][0].items()
                if v == v}
    assert per_class == official and per_class


def test_submission_zip(tmp_path):
    from bdd100k_ins_seg.formats.submission import write_submission
    out = tmp_path / 'OUT'
    (out / 'bitmasks').mkdir(parents=True)
    for name in ('a', 'b', 'stale'):
        Image.fromarray(np.zeros((4, 6, 4), np.uint8)).save(
            out / 'bitmasks' / f'{name}.png')
    (out / 'score.json').write_text(json.dumps(
        [dict(name='a.jpg', labels=[]), dict(name='b.jpg', labels=[])]))
    (out / 'rles.json').write_text('{}')
    path = write_submission(str(out))
    assert path == str(out) + '.zip'
    with zipfile.ZipFile(path) as archive:
        assert sorted(archive.namelist()) == [
            'bitmasks/a.png', 'bitmasks/b.png', 'score.json']
        assert archive.read('bitmasks/a.png') == (
            out / 'bitmasks' / 'a.png').read_bytes()
    os.remove(out / 'bitmasks' / 'b.png')
    with pytest.raises(ValueError, match='bitmasks/b.png'):
        write_submission(str(out), str(tmp_path / 'other.zip'))
    assert not osp.exists(tmp_path / 'other.zip')


def test_test_script_refuses_a_zip_without_bitmasks():
    proc = subprocess.run(
        [sys.executable, osp.join(REPO, 'test.py'), 'c.py', '--format-dir',
         'OUT', '--out-format', 'rle', '--zip'],
        capture_output=True, text=True, env=dict(os.environ,
                                                 PYTHONPATH=REPO))
    assert proc.returncode == 2
    assert proc.stderr.splitlines()[-1] == (
        'test.py: error: --zip packs the bitmasks (the evaluation server '
        'takes bitmasks only): use --out-format bitmask or both')


def test_sample_data_writes_the_gt_as_rle_json(tmp_path):
    """The sample's labels/ins_seg/rles/ins_seg_{split}.json hold its GT
    bitmasks' instances: the same pixels, classes and crowd flags, and the
    official loader reads them."""
    from bdd100k_ins_seg.evaluation.rle_eval import load_frames
    from bdd100k_ins_seg.formats.sample_data import generate_sample_dataset
    root = tmp_path / 'sample'
    generate_sample_dataset(str(root), seed=3, counts=dict(train=1, val=2),
                            size=(96, 64), nproc=1, progress=False)
    crowds = 0
    for split, n in (('train', 1), ('val', 2)):
        path = root / 'labels' / 'ins_seg' / 'rles' / f'ins_seg_{split}.json'
        frames = rle.read_rle_file(str(path))
        mask_dir = root / 'labels' / 'ins_seg' / 'bitmasks' / split
        assert len(frames) == n
        for frame in frames:
            array = np.asarray(Image.open(mask_dir / (frame['name'][:-4] +
                                                      '.png')))
            ids = (array[..., 2].astype(int) << 8) | array[..., 3]
            assert len(frame['labels']) == len(np.unique(ids[ids > 0]))
            for label in frame['labels']:
                mask = rle.decode(label['rle'])
                assert np.array_equal(mask, ids == int(label['id']))
                assert rle.CATEGORY_NAMES.index(label['category']) + 1 == \
                    array[..., 0][mask][0]
                assert label['attributes']['crowd'] == bool(
                    array[..., 1][mask][0] & 2)
                crowds += label['attributes']['crowd']
        assert [f.name for f in load_frames(str(path))] == [
            f['name'] for f in frames]
    assert crowds  # seed 3 has a crowd region in val
