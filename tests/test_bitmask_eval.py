"""The fast evaluator gives the official evaluator's result, exactly.

Every comparison is of the whole ``DetResult`` (its json text, NaNs
included) against ``bdd100k.eval.ins_seg.evaluate_ins_seg`` (what
``python -m bdd100k.eval.run -t ins_seg`` runs) on the same files.
"""
import json
import logging
import os
import os.path as osp
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from bdd100k.common.logger import logger as bdd100k_logger
from bdd100k.common.utils import list_files, load_bdd100k_config
from bdd100k.eval import ins_seg as official

from bdd100k_ins_seg.evaluation import bitmask_eval
from bdd100k_ins_seg.benchmark.synthetic import write_case

FIXTURE = osp.join(osp.dirname(__file__), 'fixtures', 'bdd100k_ins_seg_eval')
ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))


@pytest.fixture(autouse=True)
def quiet_toolkit():
    level = bdd100k_logger.level
    bdd100k_logger.setLevel(logging.WARNING)
    yield
    bdd100k_logger.setLevel(level)


def paths(case):
    return (list_files(case['gt_dir'], '.png', with_prefix=True),
            list_files(case['pred_dir'], '.png', with_prefix=True))


def official_json(gt_paths, pred_paths, score_file):
    config = load_bdd100k_config('ins_seg').scalabel
    return json.dumps(dict(official.evaluate_ins_seg(
        gt_paths, pred_paths, score_file, config, nproc=1)))


def fast_json(gt_paths, pred_paths, score_file, nproc=1):
    return json.dumps(dict(bitmask_eval.evaluate_ins_seg(
        gt_paths, pred_paths, score_file, nproc=nproc)))


def test_identical_to_official_on_random_cases(tmp_path):
    """50 random folders: occlusions, crowd/ignore GT, empty images, absent
    classes, ids above 255, index gaps, listed indices without pixels, tied
    scores, images without predictions."""
    aps = []
    for seed in range(50):
        case = write_case(str(tmp_path / str(seed)), seed,
                          num_images=1 + seed % 4)
        gt_paths, pred_paths = paths(case)
        expected = official_json(gt_paths, pred_paths, case['score_file'])
        assert fast_json(gt_paths, pred_paths,
                         case['score_file']) == expected, f'seed {seed}'
        aps.append(json.loads(expected)['AP'][-1]['OVERALL'])
        shutil.rmtree(str(tmp_path / str(seed)))
    # The cases are not degenerate: a spread of scores.
    finite = [ap for ap in aps if ap == ap]
    assert len(finite) > 40 and min(finite) < 20 and max(finite) > 40


def test_per_image_arrays_and_matches_equal_the_official(tmp_path):
    """The per-image pass and the matching, array by array (values and
    dtypes), against the official ``compute_iou`` and ``compute_match``."""
    config = load_bdd100k_config('ins_seg').scalabel
    cat_ids = [c['id'] for c in
               official.get_coco_categories(config)]
    names = [c['name'] for c in official.get_coco_categories(config)]
    checked = 0
    for seed in range(100, 112):
        case = write_case(str(tmp_path / str(seed)), seed, num_images=3)
        gt_paths, pred_paths = paths(case)
        evals = [cls(gt_paths, pred_paths, case['score_file'], names, 1)
                 for cls in (official.BDD100KInsSegEval,
                             bitmask_eval.FastInsSegEval)]
        for ref, ours in zip(*(e.iou_res for e in evals)):
            assert ref.keys() == ours.keys()
            for key in ref:
                a, b = np.asarray(ref[key]), np.asarray(ours[key])
                assert a.dtype == b.dtype and a.shape == b.shape, key
                assert np.array_equal(a, b), key
                checked += 1
        for e in evals:
            e.params.catIds = cat_ids
            e.evaluate()
        for ref, ours in zip(*(e.evalImgs for e in evals)):
            assert ref.keys() == ours.keys()
            for key in ref:
                a, b = np.asarray(ref[key]), np.asarray(ours[key])
                assert a.dtype == b.dtype and np.array_equal(a, b), key
    assert checked > 12 * 3 * 8


def test_toolkit_fixture():
    """The toolkit's own test case: the official result and the reference
    numbers of the toolkit's test."""
    gt_paths = list_files(osp.join(FIXTURE, 'gt'), '.png', with_prefix=True)
    pred_paths = list_files(osp.join(FIXTURE, 'pred'), '.png',
                            with_prefix=True)
    score_file = osp.join(FIXTURE, 'pred.json')
    ours = fast_json(gt_paths, pred_paths, score_file)
    assert ours == official_json(gt_paths, pred_paths, score_file)
    result = json.loads(ours)
    assert result['AP'][-1]['OVERALL'] == pytest.approx(68.60561056)
    assert result['AP50'][-1]['OVERALL'] == pytest.approx(89.68646865)
    assert result['AR1'][-1]['OVERALL'] == pytest.approx(65.83333333)
    assert result['AP'][0]['car'] == pytest.approx(15.81683168)


def test_process_pool_gives_the_same_result(tmp_path):
    case = write_case(str(tmp_path), 7, num_images=6)
    gt_paths, pred_paths = paths(case)
    assert fast_json(gt_paths, pred_paths, case['score_file'],
                     nproc=2) == fast_json(gt_paths, pred_paths,
                                           case['score_file'], nproc=1)


def _rgba(ids, categories, attributes=0):
    bitmask = np.zeros(ids.shape + (4, ), np.uint8)
    bitmask[..., 0] = categories
    bitmask[..., 1] = attributes
    bitmask[..., 2] = ids >> 8
    bitmask[..., 3] = ids & 255
    return bitmask


def _one_image(tmp_path, gt, pred, labels):
    os.makedirs(tmp_path / 'gt', exist_ok=True)
    os.makedirs(tmp_path / 'pred', exist_ok=True)
    Image.fromarray(gt).save(tmp_path / 'gt' / 'a.png')
    Image.fromarray(pred).save(tmp_path / 'pred' / 'a.png')
    with open(tmp_path / 'score.json', 'w') as f:
        json.dump([dict(name='a.jpg', labels=labels)], f)
    return ([str(tmp_path / 'gt' / 'a.png')],
            [str(tmp_path / 'pred' / 'a.png')], str(tmp_path / 'score.json'))


def test_inputs_the_official_code_cannot_score_are_errors(tmp_path):
    ids = np.zeros((20, 30), np.int32)
    ids[2:8, 2:8] = 1
    cats = np.where(ids > 0, 3, 0)
    good = _rgba(ids, cats)
    two_classes = good.copy()
    two_classes[2, 2, 0] = 4  # one pixel of instance 1 says another class
    labels = [dict(index=1, score=0.9)]

    args = _one_image(tmp_path / 'a', two_classes, good, labels)
    with pytest.raises(AssertionError):
        official_json(*args)
    with pytest.raises(ValueError, match=r'a\.png: instance 1 .*category'):
        fast_json(*args)

    args = _one_image(tmp_path / 'b', good, good,
                      labels + [dict(index=1, score=0.5)])
    with pytest.raises(IndexError):
        official_json(*args)
    with pytest.raises(ValueError, match='index 1 is listed more than once'):
        fast_json(*args)

    args = _one_image(tmp_path / 'c', good, good[:10], labels)
    with pytest.raises(ValueError, match='differs from its GT'):
        fast_json(*args)

    with open(args[2], 'w') as f:
        json.dump([dict(name='other.jpg', labels=labels)], f)
    with pytest.raises(ValueError, match='no entry for a.png'):
        fast_json(args[0], args[0], args[2])


def test_one_pixel_changes_the_result(tmp_path):
    """The comparison above is sharp: one pixel less in a prediction
    (IoU 0.50 -> 0.49) changes the official json, and ours follows."""
    ids = np.zeros((40, 40), np.int32)
    ids[5:15, 5:15] = 1
    gt = _rgba(ids, np.where(ids > 0, 3, 0))
    pred = np.zeros_like(gt)
    pred[5:10, 5:15] = gt[5:10, 5:15]  # IoU 50/100: a match at 0.5
    labels = [dict(index=1, score=0.9)]
    before = fast_json(*_one_image(tmp_path / 'a', gt, pred, labels))
    pred[5, 5] = 0
    args = _one_image(tmp_path / 'b', gt, pred, labels)
    after = fast_json(*args)
    assert after != before and after == official_json(*args)


def test_noise_bitmasks_runs_of_one_pixel(tmp_path):
    """Per-pixel noise (most runs one pixel long, GT ids above 255, crowd
    GT): still the official result."""
    rng = np.random.default_rng(3)
    gt_ids = rng.integers(0, 6, (30, 41)) * 300
    gt = _rgba(gt_ids, np.where(gt_ids > 0, gt_ids // 300, 0),
               np.where(gt_ids == 600, 2, 0))
    dt_ids = rng.integers(0, 5, (30, 41))
    pred = _rgba(dt_ids, rng.integers(1, 9, 5)[dt_ids])
    labels = [dict(index=i, score=float(s))
              for i, s in zip(range(1, 5), rng.random(4))]
    args = _one_image(tmp_path, gt, pred, labels)
    assert fast_json(*args) == official_json(*args)


def _evaluated(cls, args, iou_thrs):
    """(summary json, evalImgs, iou_res) of evaluator ``cls`` at the IoU
    thresholds ``iou_thrs`` (the steps of ``evaluate_ins_seg``)."""
    categories = official.get_coco_categories(
        load_bdd100k_config('ins_seg').scalabel)
    evaluator = cls(*args, [c['name'] for c in categories], 1)
    evaluator.params.catIds = [c['id'] for c in categories]
    evaluator.params.iouThrs = np.array(iou_thrs)
    evaluator.evaluate()
    evaluator.accumulate()
    return (json.dumps(dict(evaluator.summarize())), evaluator.evalImgs,
            evaluator.iou_res)


@pytest.mark.parametrize('first_gt', ['plain', 'crowd', 'crowd_ignored'])
@pytest.mark.parametrize('prediction', ['union', 'middle'])
def test_a_tie_matches_the_first_gt_as_the_official_code(tmp_path, first_gt,
                                                         prediction):
    """A prediction symmetric between two mirror-image GT instances has
    the same IoU with both: the official ``np.argmax`` takes the first.

    ``union`` covers both GT exactly (IoU 0.5 each: the default
    thresholds); ``middle`` covers half of each (IoU 0.2 each) and a second
    prediction the rest of the second GT (IoU 0.5), at thresholds below,
    at and above 0.2: the second prediction finds its GT free only when
    the tie went to the first. The first GT may be a crowd region (not
    used up by a match), ignored or not."""
    ids = np.zeros((30, 40), np.int32)
    ids[10:20, 5:15] = 1  # first GT
    ids[10:20, 25:35] = 2  # its mirror image
    attributes = np.where(ids == 1, dict(plain=0, crowd=2,
                                         crowd_ignored=3)[first_gt], 0)
    gt = _rgba(ids, np.where(ids > 0, 3, 0), attributes)
    dt_ids = np.zeros_like(ids)
    labels = [dict(index=1, score=0.9)]
    if prediction == 'union':
        dt_ids[ids > 0] = 1
        iou_thrs = np.linspace(.5, 0.95, 10)  # the official default
    else:
        dt_ids[10:20, 10:30] = 1
        dt_ids[10:20, 30:35] = 2
        labels.append(dict(index=2, score=0.8))
        iou_thrs = [0.1, 0.2, 0.3, 0.5, 0.75]
    pred = _rgba(dt_ids, np.where(dt_ids > 0, 3, 0))
    args = _one_image(tmp_path, gt, pred, labels)

    ref = _evaluated(official.BDD100KInsSegEval, args, iou_thrs)
    ours = _evaluated(bitmask_eval.FastInsSegEval, args, iou_thrs)
    ious = ref[2][0]['ious']
    assert ious[0, 0] == ious[0, 1] > 0  # a tie indeed
    assert ours[0] == ref[0]
    assert len(ours[1]) == len(ref[1])
    for ref_img, our_img in zip(ref[1], ours[1]):
        assert ref_img.keys() == our_img.keys()
        for key in ref_img:
            a, b = np.asarray(ref_img[key]), np.asarray(our_img[key])
            assert a.dtype == b.dtype and np.array_equal(a, b), key
    if prediction == 'union':  # the whole official run, as the CLI does
        assert fast_json(*args) == official_json(*args) == ref[0]


def _write_png(path, array, writer):
    if writer == 'pil':
        Image.fromarray(array).save(path)
    else:
        import cv2
        assert cv2.imwrite(path, cv2.cvtColor(array, cv2.COLOR_RGBA2BGRA))


@pytest.mark.parametrize('decoder', ['pyspng', 'opencv'])
def test_read_bitmask_equals_pil(tmp_path, monkeypatch, decoder):
    """Both fast decoders give PIL's pixels (what the official reader
    sees) on PNGs written with PIL's and OpenCV's filter choices; a
    truncated file is an error naming it."""
    import pyspng  # noqa: F401 a runtime requirement: present
    if decoder == 'opencv':
        monkeypatch.setitem(sys.modules, 'pyspng', None)
    rng = np.random.default_rng(0)
    for i, writer in enumerate(['pil', 'cv2'] * 3):
        ids = rng.integers(0, 700, (4, 5)).repeat(9, 0).repeat(13, 1)
        array = _rgba(ids, ids % 9, ids % 3)
        array[rng.random(array.shape[:2]) < 0.05] = rng.integers(
            0, 256, 4, dtype=np.uint8)
        path = str(tmp_path / f'{i}.png')
        _write_png(path, array, writer)
        with Image.open(path) as image:
            expected = np.asarray(image)
        read = bitmask_eval.read_bitmask(path)
        assert read.dtype == np.uint8 and read.flags['C_CONTIGUOUS']
        assert np.array_equal(read, expected) and \
            np.array_equal(read, array)
    data = open(path, 'rb').read()
    with open(path, 'wb') as f:
        f.write(data[:len(data) // 2])
    with pytest.raises(ValueError, match=r'1?5\.png: not a readable PNG'):
        bitmask_eval.read_bitmask(path)


def run_cli(args):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep +
               os.environ.get('PYTHONPATH', ''))
    return subprocess.run([sys.executable, '-m'] + args, capture_output=True,
                          text=True, env=env, cwd=ROOT)


def test_cli_writes_the_official_out_file(tmp_path, monkeypatch, capsys):
    """Both command lines on the same folder (in this process: the
    official one through its ``run()``): the same --out-file, byte for
    byte."""
    from bdd100k.eval import run as official_cli

    from bdd100k_ins_seg import eval as cli
    case = write_case(str(tmp_path / 'case'), 3, num_images=3)
    common = ['-g', case['gt_dir'], '-r', case['pred_dir'], '--score-file',
              case['score_file'], '--nproc', '1', '--out-file']
    monkeypatch.setattr(sys, 'argv', ['run', '-t', 'ins_seg'] + common +
                        [str(tmp_path / 'official.json')])
    official_cli.run()
    cli.main(common + [str(tmp_path / 'out' / 'ours.json')])
    with open(tmp_path / 'official.json') as f:
        expected = f.read()
    with open(tmp_path / 'out' / 'ours.json') as f:
        assert f.read() == expected
    assert 'OVERALL' in capsys.readouterr().out


def test_cli_errors(tmp_path, capsys):
    from bdd100k_ins_seg import eval as cli
    case = write_case(str(tmp_path / 'case'), 4, num_images=1)
    out = tmp_path / 'out.json'
    # As a module, in a fresh interpreter.
    proc = run_cli(['bdd100k_ins_seg.eval', '-g', str(tmp_path / 'nope'),
                    '-r', case['pred_dir'], '--score-file',
                    case['score_file'], '--out-file', str(out)])
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines()[-1] == (
        'python -m bdd100k_ins_seg.eval: error: --gt: not a folder: '
        f'{tmp_path / "nope"}')
    with open(case['score_file'], 'w') as f:
        f.write('[]')
    with pytest.raises(SystemExit) as exit_info:
        cli.main(['-g', case['gt_dir'], '-r', case['pred_dir'],
                  '--score-file', case['score_file'], '--out-file',
                  str(out)])
    message = str(exit_info.value.code)
    assert message.startswith('python -m bdd100k_ins_seg.eval: error: '
                              'evaluation: ') and 'no entry for' in message
    assert not out.exists()
    with pytest.raises(SystemExit) as exit_info:
        cli.main(['-g', case['gt_dir'], '-r', case['pred_dir'],
                  '--score-file', case['score_file'], '--nproc', '0'])
    assert exit_info.value.code == 2
    assert '--nproc: must be at least 1' in capsys.readouterr().err
    # A score file the evaluator cannot read is named before it starts
    # (the official code stops with a KeyError or a JSON error that does
    # not name the file).
    score = tmp_path / 'score.json'
    for text, why in [
            ('[{"name": "a.jpg", "labels": [{"index": 1, "sco', 'not valid '
             'JSON (Unterminated string'),
            ('{"frames": []}', 'expected a list of frames'),
            ('[{"labels": []}]', 'frame 0 has no "name"'),
            ('[{"name": "a.jpg", "labels": [{"index": 1, "score": 0.5}, '
             '{"index": 2}]}]', 'frame a.jpg: label 1 has no finite "score" '
             '(found None)'),
            ('[{"name": "a.jpg", "labels": [{"index": "1", "score": 1}]}]',
             'frame a.jpg: label 0 has no whole "index" (found \'1\')'),
            ('[{"name": "a.jpg", "labels": [{"index": 1, "score": NaN}]}]',
             'frame a.jpg: label 0 has no finite "score" (found nan)')]:
        score.write_text(text)
        with pytest.raises(SystemExit) as exit_info:
            cli.main(['-g', case['gt_dir'], '-r', case['pred_dir'],
                      '--score-file', str(score), '--out-file', str(out)])
        message = str(exit_info.value.code)
        assert message.startswith('python -m bdd100k_ins_seg.eval: error: '
                                  f'score file {score}: {why}'), message
        assert not out.exists()
    # Whole-number float indices, as the official code matches them.
    score.write_text('[{"name": "a.jpg", "labels": [{"index": 2.0, '
                     '"score": 1}]}]')
    from bdd100k_ins_seg.formats.bitmask import load_score_file
    assert list(load_score_file(str(score))['a.png']) == [2]


def test_cli_scores_a_subset_only_when_asked(tmp_path, capsys):
    """Predictions for 2 of 4 GT images: refused by default, as by the
    official command (the message says how to score them); with
    --only-predicted the 2 are scored, as the official evaluator scores a
    GT folder of those 2, and the run says how many of how many."""
    from bdd100k_ins_seg import eval as cli
    case = write_case(str(tmp_path / 'case'), 5, num_images=4)
    gt_paths, pred_paths = paths(case)
    for path in pred_paths[1::2]:
        os.remove(path)
    kept = [p for p in gt_paths
            if osp.basename(p) in {osp.basename(q) for q in pred_paths[::2]}]
    args = ['-g', case['gt_dir'], '-r', case['pred_dir'], '--score-file',
            case['score_file'], '--nproc', '1', '--out-file']
    with pytest.raises(SystemExit) as exit_info:
        cli.main(args + [str(tmp_path / 'strict.json')])
    assert str(exit_info.value.code) == (
        f'python -m bdd100k_ins_seg.eval: error: --result {case["pred_dir"]}'
        ': 2 of the 4 GT bitmasks have no prediction bitmask, e.g. '
        f'{osp.basename(pred_paths[1])}: to score the 2 images that have '
        'one, add --only-predicted')
    assert not (tmp_path / 'strict.json').exists()
    capsys.readouterr()
    cli.main(args + [str(tmp_path / 'subset.json'), '--only-predicted'])
    out = capsys.readouterr().out
    assert out.startswith('scoring 2 of the 4 GT images (--only-predicted')
    with open(tmp_path / 'subset.json') as f:
        assert json.dumps(json.load(f)) == official_json(
            kept, pred_paths[::2], case['score_file'])
