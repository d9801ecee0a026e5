"""tools/analyze.py and bdd100k_ins_seg.analysis: the precision-recall
arrays are the official accumulation's (their means are the official
AP50/AP75/AP per class), the confusion matrix counts hand-made cases
right, the error breakdown only ever forgives, and the report's pictures
render and its page's links stay inside the output folder."""
import json
import logging
import os
import os.path as osp
import re
import shutil

import numpy as np
import pytest
from PIL import Image

from bdd100k.common.logger import logger as bdd100k_logger

from bdd100k_ins_seg.analysis import errors
from bdd100k_ins_seg.analysis.evaluate import evaluate
from bdd100k_ins_seg.benchmark.synthetic import write_case
from bdd100k_ins_seg.evaluation.bitmask_eval import bitmask_ious
from scripts import load_script

CLASSES = ('pedestrian', 'rider', 'car', 'truck', 'bus', 'train',
           'motorcycle', 'bicycle')


@pytest.fixture(autouse=True)
def quiet_toolkit():
    level = bdd100k_logger.level
    bdd100k_logger.setLevel(logging.WARNING)
    yield
    bdd100k_logger.setLevel(level)


def official_json(case):
    """The official evaluator's result json (as its --out-file writes it)
    for a bitmask case."""
    from bdd100k.common.utils import list_files, load_bdd100k_config
    from bdd100k.eval import ins_seg as official
    result = official.evaluate_ins_seg(
        list_files(case['gt_dir'], '.png', with_prefix=True),
        list_files(case['pred_dir'], '.png', with_prefix=True),
        case['score_file'], load_bdd100k_config('ins_seg').scalabel,
        nproc=1)
    return json.dumps(dict(result), indent=2)


def check_pr_means(evaluation, official):
    """The mean of a class's defined points = its official AP50 and AP75,
    exactly; and its AP (the mean over the 10 thresholds, up to float
    rounding). A class without GT has no defined point and a NaN AP."""
    checked = 0
    for k, name in enumerate(CLASSES):
        for iou, metric in ((0.5, 'AP50'), (0.75, 'AP75'), (None, 'AP')):
            curve = evaluation.curve(k, iou)
            assert curve.shape == (101, )
            defined = curve[curve > -1]
            expected = official[metric][0][name]
            if expected != expected:
                assert len(defined) == 0
                continue
            ours = np.mean(defined) * 100
            if iou is None:
                assert ours == pytest.approx(expected, rel=1e-12, abs=1e-12)
            else:
                assert ours == expected, (name, metric)
            checked += 1
    return checked


def test_pr_means_are_the_official_ap_per_class(tmp_path):
    checked = 0
    for seed in range(8):
        case = write_case(str(tmp_path / str(seed)), seed,
                          num_images=1 + seed % 3)
        evaluation = evaluate(case['gt_dir'], case['pred_dir'],
                              case['score_file'], nproc=1)
        official = json.loads(official_json(case))
        assert json.dumps(evaluation.official, indent=2) == json.dumps(
            official, indent=2)
        checked += check_pr_means(evaluation, official)
        shutil.rmtree(str(tmp_path / str(seed)))
    assert checked > 60


def test_pr_means_on_rle_inputs(tmp_path):
    """RLE json: the arrays of the official RLE evaluation."""
    from test_rle import official_rle_json, rle_case, with_ids

    from bdd100k_ins_seg.formats import rle
    checked = 0
    for seed in (1, 4):
        case = rle_case(str(tmp_path / str(seed)), seed, num_images=3)
        gt_file = str(tmp_path / str(seed) / 'gt.json')
        pred_file = str(tmp_path / str(seed) / 'pred.json')
        rle.write_rle_file(gt_file, rle.gt_frames(case['gt_dir']))
        rle.write_rle_file(pred_file, rle.prediction_frames(
            case['pred_dir'], with_ids(case['score_file'])))
        evaluation = evaluate(gt_file, pred_file)
        official = official_rle_json(gt_file, pred_file)
        assert json.dumps(evaluation.official, indent=2) == official
        checked += check_pr_means(evaluation, json.loads(official))
        # one side bitmasks: converted, then the same RLE evaluation
        mixed = evaluate(case['gt_dir'], pred_file)
        assert json.dumps(mixed.official, indent=2) == official
    assert checked > 10


# ----------------------------------------------------- hand-made cases --

def rect(bitmask, box, category, index, attributes=0):
    y0, y1, x0, x1 = box
    bitmask[y0:y1, x0:x1] = (category, attributes, index >> 8, index & 255)


def image(gt, pred):
    """Per-image dict of GT [(box, category, attributes)] and predictions
    [(box, category, score)] (painted by increasing score)."""
    gt_bitmask = np.zeros((40, 120, 4), np.uint8)
    dt_bitmask = np.zeros((40, 120, 4), np.uint8)
    for i, (box, category, attributes) in enumerate(gt, start=1):
        rect(gt_bitmask, box, category, i, attributes)
    pairs = []
    order = sorted(range(len(pred)), key=lambda i: pred[i][2])
    for i in order:
        box, category, score = pred[i]
        rect(dt_bitmask, box, category, i + 1)
        pairs.append((i + 1, score))
    return bitmask_ious(gt_bitmask, dt_bitmask, pairs)


CAR, TRUCK, PED, BUS, BIKE = 3, 4, 1, 5, 8
BG = 8  # the background row / column


def test_confusion_matrix_on_hand_made_cases():
    cases = [
        # a class swap: a car predicted as a truck
        image([((0, 10, 0, 20), CAR, 0)], [((0, 10, 0, 20), TRUCK, 0.9)]),
        # a miss, and a prediction under the score threshold
        image([((0, 10, 0, 20), PED, 0)], [((20, 30, 0, 20), PED, 0.1)]),
        # a background false positive
        image([], [((0, 10, 40, 60), BUS, 0.8)]),
        # crowd regions: one also ignore (a prediction on it is left out,
        # and the region is no GT instance); one crowd only (the first
        # prediction matches it, the second, which the official matching
        # lets take it too, is left out)
        image([((0, 10, 0, 20), PED, 3), ((20, 30, 0, 20), PED, 2)],
              [((0, 10, 0, 20), PED, 0.9), ((20, 30, 0, 10), PED, 0.8),
               ((20, 30, 10, 20), PED, 0.7)]),
        # two predictions on one GT (IoU .5 each): the better scoring one
        # matches, the other is a false positive
        image([((0, 10, 0, 20), BIKE, 0)],
              [((0, 10, 0, 10), BIKE, 0.6), ((0, 10, 10, 20), BIKE, 0.7)]),
    ]
    cat_ids = list(range(1, 9))
    matrix, matches, counts = errors.confusion_matrix(cases, cat_ids, 0.3)
    expected = np.zeros((9, 9), int)
    expected[CAR - 1, TRUCK - 1] = 1
    expected[PED - 1, BG] = 1
    expected[BG, BUS - 1] = 1
    expected[PED - 1, PED - 1] = 1
    expected[BIKE - 1, BIKE - 1] = 1
    expected[BG, BIKE - 1] = 1
    assert matrix.tolist() == expected.tolist()
    # rows: the GT instances (ignore regions are none); columns: the
    # predictions scoring >= 0.3 that the protocol does not leave out
    assert matrix[:8].sum(axis=1).tolist() == [2, 0, 1, 0, 0, 0, 0, 1]
    assert matrix[:, :8].sum(axis=0).tolist() == [1, 0, 0, 1, 1, 0, 0, 2]
    assert [c['ignored'] for c in counts] == [0, 0, 0, 2, 0]
    assert counts[0] == dict(gt=1, pred=1, ignored=0, matched=0, missed=1,
                             fp=1, f1=0.0)
    assert counts[4]['f1'] == pytest.approx(2 / 3)
    assert matches[4]['gt_match'].tolist() == [0]  # the 0.7 prediction
    # the same cases at a lower threshold: the 0.1 prediction counts
    low, _, _ = errors.confusion_matrix(cases, cat_ids, 0.05)
    assert low[BG, PED - 1] == 1


def test_error_breakdown_only_forgives(tmp_path):
    """Each step only forgives errors: per class, AP never falls from C75
    to FN, and FN is 100 where there is GT."""
    case = write_case(str(tmp_path), 21, num_images=4)
    evaluation = evaluate(case['gt_dir'], case['pred_dir'],
                          case['score_file'], nproc=1)
    curves = errors.error_breakdown(evaluation)
    aps = errors.step_aps(curves)
    gained = 0
    for k in range(8):
        values = [aps[step]['per_class'][k] for step in errors.STEPS]
        if values[0] != values[0]:
            assert all(v != v for v in values)
            continue
        for before, after in zip(values[2:], values[3:]):
            assert after >= before - 1e-9
        assert values[1] >= values[0] and values[-1] == 100
        gained += values[-2] > values[2]
    assert gained  # the case has forgivable false positives


# --------------------------------------------------------------- report --

def links(html):
    return re.findall(r'(?:src|href)="([^"]+)"', html)


def check_pictures(folder, names):
    for name in names:
        with Image.open(osp.join(folder, name)) as picture:
            picture.load()
            array = np.asarray(picture.convert('RGB'))
        assert array.shape[0] > 100 and array.shape[1] > 100
        packed = (array[..., 0].astype(np.int32) << 16) | (
            array[..., 1].astype(np.int32) << 8) | array[..., 2]
        assert len(np.unique(packed)) > 8, name  # not blank


def check_page(folder, page='index.html'):
    with open(osp.join(folder, page), encoding='utf-8') as f:
        html = f.read()
    found = links(html)
    assert found
    root = osp.realpath(folder)
    for link in found:
        assert '://' not in link and not link.startswith('/'), link
        target = osp.realpath(osp.join(folder, link))
        assert target.startswith(root + os.sep) and osp.isfile(target), link
    return html, found


@pytest.fixture(scope='module')
def analysis(tmp_path_factory):
    from bdd100k_ins_seg.analysis.report import analyze
    root = tmp_path_factory.mktemp('analysis')
    case = write_case(str(root / 'case'), 3, num_images=5, size=(160, 96))
    images = root / 'images'
    images.mkdir()
    rng = np.random.default_rng(0)
    for name in os.listdir(case['gt_dir']):
        Image.fromarray(rng.integers(0, 255, (96, 160, 3), np.uint8)).save(
            images / (name[:-4] + '.jpg'))
    out = root / 'out'
    summary = analyze(case['gt_dir'], case['pred_dir'], str(out),
                      score_file=case['score_file'], img_dir=str(images),
                      nproc=1, num_gallery=2)
    return case, out, summary


def test_report_summary(analysis):
    case, out, summary = analysis
    with open(out / 'summary.json') as f:
        written = json.load(f)
    assert json.dumps(written['official'], indent=2) == official_json(case)
    assert sorted(written['pr']) == sorted(CLASSES)
    for curves in written['pr'].values():
        assert sorted(curves) == ['iou', 'iou50', 'iou75']
        assert all(len(c) == 101 for c in curves.values())
    assert written['confusion']['classes'] == list(CLASSES) + [
        'background']
    matrix = np.array(written['confusion']['matrix'])
    assert matrix.shape == (9, 9)
    images = written['images']
    assert len(images) == 5
    assert matrix[:8].sum() == sum(r['gt'] for r in images)
    assert matrix[:, :8].sum() == sum(r['pred'] - r['ignored']
                                      for r in images)
    assert list(written['errors']['ap']) == list(CLASSES) + ['OVERALL']
    assert written['errors']['ap']['OVERALL']['C50'] == pytest.approx(
        written['official']['AP50'][1]['OVERALL'])


def test_report_pictures_and_page(analysis):
    case, out, summary = analysis
    check_pictures(str(out), ['pr_curves.png', 'confusion_matrix.png',
                              'error_breakdown.png'])
    gallery = sorted(os.listdir(out / 'gallery'))
    assert gallery == ['best_01.jpg', 'best_02.jpg', 'worst_01.jpg',
                       'worst_02.jpg']
    check_pictures(str(out / 'gallery'), gallery)
    with Image.open(out / 'gallery' / 'worst_01.jpg') as row:
        assert row.width > 3 * 160  # image | GT | prediction
    html, found = check_page(str(out))
    for name in ['pr_curves.png', 'confusion_matrix.png',
                 'error_breakdown.png'] + [f'gallery/{g}' for g in gallery]:
        assert name in found
    assert '<table>' in html and 'OVERALL' in html
    worst = summary['gallery']['worst']
    assert [r['f1'] for r in worst] == sorted(r['f1'] for r in worst)
    assert max(r['f1'] for r in worst) <= min(
        r['f1'] for r in summary['gallery']['best'])


def test_compare_two_analyses(analysis, tmp_path):
    from bdd100k_ins_seg.analysis.compare import compare
    from bdd100k_ins_seg.analysis.report import analyze
    case, out_a, summary_a = analysis
    # B: A's predictions with the best-scoring one of each image dropped
    pred_b = tmp_path / 'pred_b'
    shutil.copytree(case['pred_dir'], pred_b)
    with open(case['score_file']) as f:
        frames = json.load(f)
    for frame in frames:
        labels = frame.get('labels') or []
        if labels:
            labels.remove(max(labels, key=lambda lb: lb['score']))
    (tmp_path / 'score_b.json').write_text(json.dumps(frames))
    out_b = tmp_path / 'b'
    analyze(case['gt_dir'], str(pred_b), str(out_b),
            score_file=str(tmp_path / 'score_b.json'),
            img_dir=summary_a['inputs']['images'], nproc=1, num_gallery=1)
    out = tmp_path / 'cmp'
    result = compare(str(out_a), str(out_b), str(out), num=2)
    ap = result['metrics']['AP']['OVERALL']
    assert ap['a'] == summary_a['official']['AP'][1]['OVERALL']
    assert ap['delta'] == pytest.approx(ap['b'] - ap['a'])
    deltas = [abs(r['delta']) for r in result['images']]
    assert deltas == sorted(deltas, reverse=True) and deltas[0] > 0
    check_pictures(str(out), ['ap_by_class.png', 'differ_01.jpg'])
    check_page(str(out))
    # two result json files: the per-class part only
    (tmp_path / 'a.json').write_text(json.dumps(summary_a['official']))
    only = compare(str(tmp_path / 'a.json'), str(out_b / 'summary.json'),
                   str(tmp_path / 'cmp2'))
    assert only['images'] == [] and only['metrics']['AP']['OVERALL'][
        'delta'] == pytest.approx(ap['delta'])


def test_training_curves(tmp_path):
    from bdd100k_ins_seg.analysis.logs import plot_logs, read_records
    runs = []
    for r, scale in enumerate((1.0, 0.8)):
        run = tmp_path / f'run{r}'
        logs = run / '20260101_000000' / 'vis_data'
        logs.mkdir(parents=True)
        lines = []
        for it in range(10, 110, 10):
            lines.append(dict(lr=0.01 * scale, loss=scale * 3 / it ** 0.5,
                              loss_cls=1 / it, loss_mask=2 / it, time=0.5,
                              data_time=0.1, epoch=1 + it // 50, iter=it,
                              memory=100, step=it))
            if it % 50 == 0:  # an epoch-based validation: step = epoch
                lines.append({'bdd100k/segm_AP': it / 10 * scale,
                              'bdd100k/segm_AP50': it / 5 * scale,
                              'bdd100k/segm_AP_car': it / 4,
                              'bdd100k/segm_AP_pedestrian': it / 8,
                              'data_time': 0.1, 'time': 0.2,
                              'step': it // 50})
        (logs / 'scalars.json').write_text(
            '\n'.join(json.dumps(line) for line in lines) + '\n')
        runs.append(str(run))
    train, val = read_records(runs[0])
    assert [r['x'] for r in val] == [50, 100]  # at their iterations
    written = plot_logs(runs, str(tmp_path / 'out'))
    assert sorted(written) == ['losses', 'lr', 'time', 'val_ap',
                               'val_ap_per_class']
    check_pictures(str(tmp_path / 'out'), [osp.basename(p) for p in
                                           written.values()])


def test_cli_from_run_and_errors(analysis, tmp_path, capsys):
    """--from-run finds a test.py output folder's predictions and the
    inputs its manifest recorded; bad inputs stop with one line, before
    anything is written."""
    tool = load_script('tools/analyze.py', 'analyze_tool')
    case, out, summary = analysis
    run = tmp_path / 'run'
    shutil.copytree(case['pred_dir'], run / 'bitmasks')
    shutil.copy(case['score_file'], run / 'score.json')
    (run / '.run.json').write_text(json.dumps(dict(
        gt=case['gt_dir'], img_dir=summary['inputs']['images'])))
    args = tool.parse_args(['--from-run', str(run), '-o', 'x'])
    assert tool.from_run(args) == (
        case['gt_dir'], str(run / 'bitmasks'), str(run / 'score.json'),
        summary['inputs']['images'])
    shutil.rmtree(run / 'bitmasks')
    (run / 'rles.json').write_text('{}')  # --out-format rle
    assert tool.from_run(tool.parse_args([
        '--from-run', str(run), '-g', 'gt.json', '-o', 'x']))[1:3] == (
        str(run / 'rles.json'), None)
    (run / '.run.json').write_text('{}')
    bad = [
        (['--from-run', str(run), '-o', str(tmp_path / 'x')],
         f'--from-run {run}: its run recorded no GT (a --format-only run): '
         'give it with -g'),
        (['-g', case['gt_dir'], '-r', str(tmp_path / 'none.json'), '-o',
          str(tmp_path / 'x')], f'--result: not found: {tmp_path}/none.json'),
        (['-g', case['gt_dir'], '-r', case['score_file'], '-o',
          str(tmp_path / 'x')], f'--result {case["score_file"]}: frame '),
        (['-g', case['gt_dir'], '-r', case['pred_dir'], '-o',
          str(tmp_path / 'x')],
         '--score-file: bitmask predictions need their score.json'),
    ]
    for argv, message in bad:
        with pytest.raises(SystemExit) as exit_:
            tool.main(argv)
        assert exit_.value.code == 1
        err = capsys.readouterr().err
        assert err.count('\n') == 1 and f': error: {message}' in err, err
    assert not osp.exists(tmp_path / 'x')
