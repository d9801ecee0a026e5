"""The analysis of one result: ``summary.json``, the figures, the gallery
and ``index.html`` (one page, relative links only: it opens from disk).

``summary.json`` holds ``official`` (the official ``--out-file`` json),
``pr`` (per class the 101-point precision at IoU .5, .75 and the mean over
the 10 thresholds, from the official accumulation; -1: no GT),
``confusion``, ``errors`` (COCO-analyze AP per step and class) and
``images`` (per-image counts at IoU .5), besides the inputs and settings.
"""
import html
import json
import os
import os.path as osp
from typing import Dict, List, Optional, Sequence

import numpy as np

from bdd100k_ins_seg.analysis import errors as errors_mod
from bdd100k_ins_seg.analysis import plots

SUMMARY = 'summary.json'
PAGE = 'index.html'
#: The official table's columns, in the evaluator's order.
METRICS = ('AP', 'AP50', 'AP75', 'APs', 'APm', 'APl', 'AR1', 'AR10',
           'AR100', 'ARs', 'ARm', 'ARl')
STYLE = """
body { font-family: sans-serif; margin: 24px; color: #222; max-width: 1500px }
table { border-collapse: collapse; margin: 8px 0 20px }
td, th { border: 1px solid #ccc; padding: 3px 8px; text-align: right }
th { background: #f2f2f2 } td:first-child, th:first-child { text-align: left }
img { max-width: 100%; border: 1px solid #ddd; margin: 4px 0 }
.note { color: #555; font-size: 90% }
"""


def _number(value) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return '-'
    return f'{value:.1f}' if isinstance(value, float) else str(value)


def table(header: Sequence[str], rows: Sequence[Sequence]) -> str:
    """An HTML table (cells escaped; floats with one decimal)."""
    head = ''.join(f'<th>{html.escape(str(h))}</th>' for h in header)
    body = ''.join(
        '<tr>' + ''.join(f'<td>{html.escape(_number(c))}</td>' for c in row)
        + '</tr>' for row in rows)
    return f'<table><tr>{head}</tr>{body}</table>'


def official_table(official: Dict) -> str:
    """The official result as the evaluator prints it: a row per class and
    OVERALL, a column per metric."""
    metrics = [m for m in METRICS if m in official]
    names = list(official[metrics[0]][0]) + ['OVERALL']
    rows = [[name] + [official[m][0 if name != 'OVERALL' else 1].get(name)
                      for m in metrics] for name in names]
    return table(['class'] + metrics, rows)


def page(title: str, sections: Sequence[str]) -> str:
    return ('<!DOCTYPE html>\n<html><head><meta charset="utf-8">'
            f'<title>{html.escape(title)}</title><style>{STYLE}</style>'
            f'</head><body><h1>{html.escape(title)}</h1>\n' +
            '\n'.join(sections) + '\n</body></html>\n')


def figure(file: str, caption: str) -> str:
    return (f'<figure><a href="{html.escape(file)}"><img src="'
            f'{html.escape(file)}" alt="{html.escape(caption)}"></a>'
            f'<figcaption class="note">{html.escape(caption)}</figcaption>'
            '</figure>')


def write_text(path: str, text: str) -> None:
    from bdd100k_ins_seg.formats.bitmask import atomic_write
    atomic_write(path, text.encode('utf-8'))


def build_summary(evaluation, score_thr: float, inputs: Dict):
    """(summary dict, error curves, per-image matches, per-image counts)."""
    classes = evaluation.classes
    pr = {}
    for k, name in enumerate(classes):
        pr[name] = {key: [float(v) for v in evaluation.curve(k, iou)]
                    for key, iou in (('iou50', 0.5), ('iou75', 0.75),
                                     ('iou', None))}
    matrix, matches, counts = errors_mod.confusion_matrix(
        evaluation.per_image, evaluation.cat_ids, score_thr)
    curves = errors_mod.error_breakdown(evaluation)
    images = [dict(name=name, **c) for name, c in zip(evaluation.names,
                                                      counts)]
    summary = dict(
        inputs=dict(dict(format=evaluation.kind), **inputs),
        score_thr=score_thr,
        official=evaluation.official,
        recall_thresholds=[float(r) for r in evaluation.rec_thrs],
        pr=pr,
        confusion=dict(classes=list(classes) + [errors_mod.BACKGROUND],
                       matrix=matrix.tolist()),
        errors=errors_mod.errors_summary(evaluation, curves),
        images=images)
    return summary, curves, matches, counts


def _figures(evaluation, summary: Dict, curves: Dict, out_dir: str
             ) -> List[str]:
    official = summary['official']
    classes = evaluation.classes
    aps = {name: dict(iou50=official['AP50'][0].get(name),
                      iou75=official['AP75'][0].get(name),
                      iou=official['AP'][0].get(name)) for name in classes}
    curve_arrays = {name: {k: np.array(v) for k, v in d.items()}
                    for name, d in summary['pr'].items()}
    written = [plots.pr_curves(evaluation.rec_thrs, curve_arrays, aps,
                               osp.join(out_dir, 'pr_curves.png'))]
    written.append(plots.confusion(
        np.array(summary['confusion']['matrix']),
        summary['confusion']['classes'], summary['score_thr'],
        osp.join(out_dir, 'confusion_matrix.png')))
    step_aps = errors_mod.step_aps(curves)
    panels = {step: [errors_mod.mean_curve(c)] + [c[:, k] for k in
                                                   range(c.shape[1])]
              for step, c in curves.items()}
    panel_aps = {step: [step_aps[step]['overall']] +
                 step_aps[step]['per_class'] for step in curves}
    written.append(plots.error_breakdown(
        evaluation.rec_thrs, panels, panel_aps, ['all classes'] + classes,
        osp.join(out_dir, 'error_breakdown.png')))
    return written


def _html(summary: Dict, gallery: Optional[Dict]) -> str:
    inputs = summary['inputs']
    sections = [
        '<p class="note">GT <code>{}</code>, predictions <code>{}</code>{} '
        '({} format); confusion matrix, counts and gallery at score &gt;= '
        '{}.</p>'.format(
            html.escape(str(inputs.get('gt'))),
            html.escape(str(inputs.get('result'))),
            f', scores <code>{html.escape(str(inputs["score_file"]))}'
            '</code>' if inputs.get('score_file') else '',
            html.escape(inputs['format']), summary['score_thr']),
        '<h2>Official result</h2>', official_table(summary['official']),
        '<h2>Precision-recall</h2>',
        figure('pr_curves.png', 'Per-class precision over recall from the '
               'official accumulation; the legend gives the official AP.'),
        '<h2>Confusion matrix</h2>',
        figure('confusion_matrix.png', 'Rows: GT class (last: predictions '
               'that matched no GT); columns: predicted class (last: GT '
               'that no prediction matched).'),
        '<h2>Error breakdown</h2>',
    ]
    steps = summary['errors']['steps']
    ap = summary['errors']['ap']
    sections.append(table(['class'] + steps,
                          [[name] + [ap[name][s] for s in steps]
                           for name in ap]))
    sections.append(figure('error_breakdown.png', 'COCO analyze: AP (x100) '
                           'once each kind of error is forgiven.'))
    if gallery:
        for kind, rows in gallery.items():
            sections.append(f'<h2>Gallery: {kind} images (F1 at IoU .5)'
                            '</h2>')
            sections += [figure(row['file'], f'{row["name"]}: F1 '
                                f'{row["f1"]:.2f}, {row["matched"]} '
                                f'matched, {row["missed"]} missed, '
                                f'{row["fp"]} false positives')
                         for row in rows]
    worst = sorted(summary['images'], key=lambda r: (r['f1'], r['name']))
    sections.append('<h2>Images (lowest F1 first, at most 50)</h2>')
    sections.append(table(
        ['image', 'GT', 'predictions', 'matched', 'missed',
         'false positives', 'ignored', 'F1'],
        [[r['name'], r['gt'], r['pred'], r['matched'], r['missed'], r['fp'],
          r['ignored'], f'{r["f1"]:.2f}'] for r in worst[:50]]))
    return page('BDD100K instance segmentation: error analysis', sections)


def analyze(gt: str, pred: str, out_dir: str,
            score_file: Optional[str] = None, img_dir: Optional[str] = None,
            score_thr: float = 0.3, nproc: Optional[int] = None,
            num_gallery: int = 6) -> Dict:
    """Write the analysis of ``pred`` against ``gt`` into ``out_dir``;
    returns the summary (see the module doc). Raises
    :class:`bdd100k_ins_seg.cli.InputError` for bad inputs, before
    anything is written."""
    from bdd100k_ins_seg.analysis.evaluate import evaluate
    from bdd100k_ins_seg.cli import InputError
    if img_dir is not None and not osp.isdir(img_dir):
        raise InputError('--images', f'not a folder: {img_dir}')
    evaluation = evaluate(gt, pred, score_file, nproc)
    inputs = dict(gt=osp.abspath(gt), result=osp.abspath(pred),
                  score_file=osp.abspath(score_file) if score_file else None,
                  images=osp.abspath(img_dir) if img_dir else None)
    if osp.isdir(gt) != osp.isdir(pred):  # scored as RLE (converted)
        inputs['format'] = 'mixed'
    summary, curves, matches, counts = build_summary(evaluation, score_thr,
                                                     inputs)
    os.makedirs(out_dir, exist_ok=True)
    _figures(evaluation, summary, curves, out_dir)
    gallery = None
    if img_dir is not None:
        from bdd100k_ins_seg.analysis.gallery import write_gallery
        gallery = write_gallery(evaluation, matches, counts, img_dir,
                                osp.join(out_dir, 'gallery'), num_gallery,
                                score_thr)
        summary['gallery'] = gallery
    write_text(osp.join(out_dir, SUMMARY), json.dumps(summary, indent=1))
    write_text(osp.join(out_dir, PAGE), _html(summary, gallery))
    return summary


__all__ = ['analyze', 'build_summary', 'official_table', 'table', 'page',
           'figure', 'write_text', 'SUMMARY', 'PAGE']
