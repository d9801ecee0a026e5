"""Two results side by side (``tools/analyze.py --compare A B``).

A and B are analysis folders (``summary.json`` of :mod:`.report`) or
official result files (the evaluator's ``--out-file`` json). Written: the
per-class AP, AP50 and AP75 of both with their differences
(``compare.json``, ``ap_by_class.png``), and for two analyses of the same
images the images whose F1 at IoU .5 differs most, drawn GT | A | B when
the inputs the analyses recorded are still there.
"""
import json
import os
import os.path as osp
from typing import Dict, List, Optional, Tuple

from bdd100k_ins_seg.cli import InputError

METRICS = ('AP', 'AP50', 'AP75')


def load(path: str) -> Tuple[Dict, Optional[Dict]]:
    """(official result, analysis summary or None) of an analysis folder,
    a ``summary.json`` or a result json."""
    file = osp.join(path, 'summary.json') if osp.isdir(path) else path
    if not osp.isfile(file):
        raise InputError(f'--compare {path}', 'neither an analysis folder '
                         '(summary.json) nor a result json')
    try:
        with open(file, encoding='utf-8') as f:
            data = json.load(f)
    except (OSError, ValueError) as e:
        raise InputError(f'--compare {path}', f'not readable json: {e}') \
            from None
    if isinstance(data, dict) and isinstance(data.get('official'), dict):
        return data['official'], data
    if isinstance(data, dict) and all(
            isinstance(data.get(m), list) and len(data[m]) == 2
            for m in METRICS):
        return data, None
    raise InputError(f'--compare {path}', 'not an analysis summary nor an '
                     'official result json (no AP, AP50, AP75 lists)')


def per_class(official: Dict, metric: str) -> Dict[str, float]:
    values = dict(official[metric][0])
    values['OVERALL'] = official[metric][1].get('OVERALL', float('nan'))
    return values


def image_deltas(a: Dict, b: Dict) -> List[Dict]:
    """The images of both analyses, by decreasing |F1 B - F1 A|."""
    a_images = {r['name']: r for r in a.get('images', [])}
    out = []
    for r in b.get('images', []):
        if r['name'] in a_images:
            ra = a_images[r['name']]
            out.append(dict(name=r['name'], f1_a=ra['f1'], f1_b=r['f1'],
                            delta=r['f1'] - ra['f1'],
                            matched_a=ra['matched'], matched_b=r['matched'],
                            fp_a=ra['fp'], fp_b=r['fp']))
    return sorted(out, key=lambda r: (-abs(r['delta']), r['name']))


class _Inputs:
    """An analysis' recorded inputs, read again image by image."""

    def __init__(self, summary: Dict):
        self.inputs = summary.get('inputs') or {}
        self.score_thr = summary.get('score_thr', 0.3)
        self._frames = None

    def usable(self) -> bool:
        i = self.inputs
        if i.get('format') == 'bitmask':
            return bool(i.get('gt') and osp.isdir(i['gt']) and
                        osp.isdir(i.get('result') or '') and
                        osp.isfile(i.get('score_file') or ''))
        return bool(osp.isfile(i.get('gt') or '') and
                    osp.isfile(i.get('result') or ''))

    def image(self, name: str):
        """(GT bitmask, prediction bitmask, (index, score) pairs)."""
        from bdd100k_ins_seg.analysis.evaluate import _rasterize_pair
        i = self.inputs
        if i['format'] == 'bitmask':
            from bdd100k_ins_seg.evaluation.bitmask_eval import read_bitmask
            from bdd100k_ins_seg.formats.bitmask import load_score_file
            if self._frames is None:
                self._frames = load_score_file(i['score_file'])
            labels = self._frames.get(name, {})
            return (read_bitmask(osp.join(i['gt'], name)),
                    read_bitmask(osp.join(i['result'], name)),
                    [(k, v['score']) for k, v in labels.items()])
        from bdd100k_ins_seg.formats.rle import frame_size, read_rle_file
        if self._frames is None:
            self._frames = [
                {osp.splitext(f['name'])[0] + '.png': f.get('labels') or []
                 for f in read_rle_file(path)}
                for path in (i['gt'], i['result'])]
        gt = self._frames[0].get(name, [])
        dt = self._frames[1].get(name, [])
        size = frame_size(dict(labels=gt)) or frame_size(dict(labels=dt)) \
            or (1, 1)
        return _rasterize_pair(gt, dt, size)


def _row(name: str, a: _Inputs, b: _Inputs, img_dir: Optional[str]):
    """image | GT (A's misses outlined) | A's predictions | B's, false
    positives outlined."""
    from bdd100k_ins_seg.analysis.errors import image_counts, match_image
    from bdd100k_ins_seg.analysis.gallery import join, render_row
    from bdd100k_ins_seg.evaluation.bitmask_eval import bitmask_ious
    from bdd100k_ins_seg.visualization.overlay import find_image, read_image
    stem = osp.splitext(name)[0]
    found = find_image(img_dir, stem) if img_dir else None
    image = read_image(found) if found else None
    cat_ids = list(range(1, 9))
    rows = []
    for label, side in (('A', a), ('B', b)):
        gt, dt, pairs = side.image(name)
        match = match_image(bitmask_ious(gt, dt, pairs), cat_ids,
                            side.score_thr)
        rows.append(render_row(image, gt, dt, pairs, match,
                               image_counts(match), side.score_thr,
                               stem, panels_only=True,
                               label=f'{label}: '))
    return join(rows[0] + rows[1][2:])


def compare(path_a: str, path_b: str, out_dir: str, num: int = 6,
            labels: Optional[Tuple[str, str]] = None) -> Dict:
    """Write the comparison of A and B into ``out_dir``; returns
    ``compare.json``'s content."""
    from bdd100k_ins_seg.analysis import plots
    from bdd100k_ins_seg.analysis.report import (figure, page, table,
                                                 write_text)
    official_a, summary_a = load(path_a)
    official_b, summary_b = load(path_b)
    labels = labels or ('A: ' + osp.basename(osp.normpath(path_a)),
                        'B: ' + osp.basename(osp.normpath(path_b)))
    metrics = {}
    for metric in METRICS:
        a, b = per_class(official_a, metric), per_class(official_b, metric)
        metrics[metric] = {name: dict(a=a.get(name), b=b.get(name),
                                      delta=(b.get(name, float('nan')) -
                                             a.get(name, float('nan'))))
                           for name in a}
    os.makedirs(out_dir, exist_ok=True)
    names = list(metrics['AP'])
    plots.ap_bars(names, [metrics['AP'][n]['a'] for n in names],
                  [metrics['AP'][n]['b'] for n in names], labels,
                  osp.join(out_dir, 'ap_by_class.png'))
    result = dict(a=osp.abspath(path_a), b=osp.abspath(path_b),
                  metrics=metrics, images=[])
    sections = [f'<p class="note">{labels[0]}: <code>{osp.abspath(path_a)}'
                f'</code>; {labels[1]}: <code>{osp.abspath(path_b)}</code>'
                '</p>', figure('ap_by_class.png', 'AP by class, B - A above '
                               'the bars.')]
    for metric in METRICS:
        sections.append(f'<h2>{metric}</h2>')
        sections.append(table(['class', 'A', 'B', 'B - A'], [
            [n, v['a'], v['b'], v['delta']]
            for n, v in metrics[metric].items()]))
    if summary_a is not None and summary_b is not None:
        deltas = image_deltas(summary_a, summary_b)
        result['images'] = deltas
        sections.append('<h2>Images where A and B differ most (F1 at IoU '
                        '.5)</h2>')
        sides = _Inputs(summary_a), _Inputs(summary_b)
        img_dir = (summary_b.get('inputs') or {}).get('images') or \
            (summary_a.get('inputs') or {}).get('images')
        differ = [r for r in deltas if r['delta'] != 0]
        if not differ:
            sections.append('<p>No image differs in F1.</p>')
        if all(s.usable() for s in sides):
            from bdd100k_ins_seg.analysis.gallery import write_jpeg
            for rank, r in enumerate(differ[:num], start=1):
                file = f'differ_{rank:02d}.jpg'
                write_jpeg(osp.join(out_dir, file),
                           _row(r['name'], *sides, img_dir))
                sections.append(figure(file, f'{r["name"]}: F1 '
                                       f'{r["f1_a"]:.2f} (A) -> '
                                       f'{r["f1_b"]:.2f} (B)'))
        sections.append(table(
            ['image', 'F1 A', 'F1 B', 'B - A', 'matched A', 'matched B',
             'false pos. A', 'false pos. B'],
            [[r['name'], f'{r["f1_a"]:.2f}', f'{r["f1_b"]:.2f}',
              f'{r["delta"]:+.2f}', r['matched_a'], r['matched_b'],
              r['fp_a'], r['fp_b']] for r in differ[:50]]))
    write_text(osp.join(out_dir, 'compare.json'),
               json.dumps(result, indent=1))
    write_text(osp.join(out_dir, 'index.html'),
               page('BDD100K instance segmentation: A vs B', sections))
    return result


__all__ = ['load', 'compare', 'image_deltas', 'per_class']
