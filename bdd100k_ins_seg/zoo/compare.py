"""Did I reproduce it? A result file against a model's published scores.

A result file is what the official evaluator writes with ``--out-file``
(``python -m bdd100k.eval.run -t ins_seg ... --out-file F``, or
``test.py --eval --out-file F``): a json object mapping each metric (AP,
AP50, AP75, APs, ..., AR100, ...) to ``[{class: value}, {"OVERALL":
value}]``, x100, NaN for a class without GT. The published
``scores-val``/``scores-test`` files of the zoo have the same layout
(:func:`bdd100k_ins_seg.zoo.check_file` refuses a download that has not).

:func:`compare` lines up ours and the published numbers per class and
OVERALL for AP / AP50 / AP75 / AR100 and flags the rows whose AP differs by
more than :data:`FLAG_AP`; :func:`format_comparison` prints them as a table.
This module imports neither torch nor mmdet.
"""
import math
from dataclasses import dataclass, field
from typing import Dict, List, Optional

from bdd100k_ins_seg.evaluation.results import (ALL_METRICS, FLAG_AP, METRICS,
                                                OVERALL, Result, load_result,
                                                parse_result)


@dataclass
class Row:
    """One class (or OVERALL) of a comparison."""
    name: str
    ours: Dict[str, float] = field(default_factory=dict)
    published: Dict[str, float] = field(default_factory=dict)

    def delta(self, metric):
        """ours - published (NaN when either is absent)."""
        return self.ours.get(metric, math.nan) - self.published.get(
            metric, math.nan)

    def exceeds(self, limit):
        """Whether |delta AP| > limit (never for an absent class)."""
        delta = self.delta('AP')
        return not math.isnan(delta) and abs(delta) > limit

    @property
    def flagged(self):
        return self.exceeds(FLAG_AP)


def _values(result, name, metric):
    if metric not in result:
        return math.nan
    classes, overall = result[metric]
    return overall if name == OVERALL else classes.get(name, math.nan)


def compare(ours: Optional[Result], published: Result) -> List[Row]:
    """Rows for every class (published order, then classes only in ours)
    and OVERALL last. ``ours`` None gives the published numbers only."""
    names = list(published['AP'][0])
    if ours is not None:
        names += [n for n in ours['AP'][0] if n not in names]
    rows = []
    for name in names + [OVERALL]:
        row = Row(name)
        for metric in ALL_METRICS:
            row.published[metric] = _values(published, name, metric)
            if ours is not None:
                row.ours[metric] = _values(ours, name, metric)
        rows.append(row)
    return rows


def exceeding(rows: List[Row], limit: float) -> List[Row]:
    """The rows whose |delta AP| > limit."""
    return [row for row in rows if row.exceeds(limit)]


def _cell(value, width=6, sign=False):
    if value is None or math.isnan(value):
        return f'{"-":>{width}}'
    return f'{value:+{width}.2f}' if sign else f'{value:{width}.2f}'


def format_published(rows: List[Row], title: str) -> str:
    """The published per-class table (every metric of the file)."""
    metrics = [m for m in ALL_METRICS
               if any(not math.isnan(r.published[m]) for r in rows)
               or m in METRICS]
    width = max(len(r.name) for r in rows)
    lines = [title, f'{"class":<{width}} ' + ' '.join(
        f'{m:>6}' for m in metrics)]
    for row in rows:
        if row.name == OVERALL:
            lines.append('-' * len(lines[1]))
        lines.append(f'{row.name:<{width}} ' + ' '.join(
            _cell(row.published[m]) for m in metrics))
    return '\n'.join(lines)


def format_comparison(rows: List[Row], title: str) -> str:
    """Ours, published and delta of AP / AP50 / AP75 / AR100 per row;
    ``!`` marks |delta AP| > :data:`FLAG_AP`; ``-`` an absent value."""
    width = max(len(r.name) for r in rows + [Row('class')])
    block = 3 * 7 - 1
    head1 = f'{"":<{width}} ' + ' | '.join(f'{m:^{block}}' for m in METRICS)
    head2 = f'{"class":<{width}} ' + ' | '.join(
        f'{"ours":>6} {"pub":>6} {"delta":>6}' for _ in METRICS)
    lines = [title, head1, head2]
    for row in rows:
        if row.name == OVERALL:
            lines.append('-' * len(head2))
        cells = ' | '.join(
            f'{_cell(row.ours[m])} {_cell(row.published[m])} '
            f'{_cell(row.delta(m), sign=True)}' for m in METRICS)
        lines.append(f'{row.name:<{width}} {cells}'
                     + (' !' if row.flagged else ''))
    flagged = [r.name for r in rows if r.flagged]
    lines.append(
        f'! |delta AP| > {FLAG_AP}: {", ".join(flagged)}' if flagged else
        f'every |delta AP| <= {FLAG_AP}')
    return '\n'.join(lines)


def published_scores(name, split='val', progress=True):
    """A model's published scores of a split, fetched into the cache.

    Returns:
        tuple[Path, dict]: the file and its :func:`parse_result`.
    """
    from bdd100k_ins_seg import zoo
    if split not in ('val', 'test'):
        raise zoo.ZooError(f'unknown split {split!r}: val or test')
    path = zoo.fetch(name, f'scores-{split}', progress=progress)
    return path, load_result(path)


@dataclass
class Comparison:
    """The outcome of :func:`run`: the table and the exit status."""
    text: str
    rows: List[Row]
    status: int


def run(name, result_file=None, split='val', fail_above=None,
        progress=True, ours=None, source=None) -> Comparison:
    """Compare a result (file, or already parsed) with the published one.

    Args:
        name (str): zoo model name.
        result_file (str, optional): the evaluator's ``--out-file`` json;
            without it (and without ``ours``) the published table is shown.
        split (str): 'val' or 'test' (which published scores).
        fail_above (float, optional): status 1 when some |delta AP| exceeds
            it.
        ours (dict, optional): a result object instead of a file (as
            :class:`bdd100k_ins_seg.plugin.metric.BDD100KInsSegMetric` keeps
            in ``last_result``).
        source (str, optional): how to call ``ours`` in the title.

    Raises:
        ResultFormatError: the result file is not in the evaluator's layout.
        bdd100k_ins_seg.zoo.ZooError: unknown model, download failure.
    """
    from bdd100k_ins_seg import zoo
    entry = zoo.get_entry(name)
    path, published = published_scores(entry.name, split, progress=progress)
    if result_file is not None:
        ours = load_result(result_file)
        source = source or str(result_file)
    elif ours is not None:
        ours = parse_result(ours, source=source or 'result')
    rows = compare(ours, published)
    if ours is None:
        text = format_published(
            rows, f'{entry.name}: published {split} scores ({path})')
        return Comparison(text, rows, 0)
    text = format_comparison(
        rows, f'{entry.name} {split}: ours ({source}) vs published ({path})')
    status = 0
    if fail_above is not None:
        over = exceeding(rows, fail_above)
        if over:
            status = 1
            text += (f'\n{len(over)} rows differ by more than {fail_above} '
                     f'AP: {", ".join(r.name for r in over)}')
    return Comparison(text, rows, status)


def published_for_config(config_path, split='val', progress=True):
    """The zoo name of a config, with its published scores fetched now
    (before hours of inference); raises ZooError for a non-zoo config."""
    from bdd100k_ins_seg import zoo
    try:
        entry = zoo.entry_for_config(config_path)
    except zoo.UnknownModelError:
        raise zoo.UnknownModelError(
            f'{config_path} is not a zoo model ({zoo.METAFILE_NAME}), so '
            'there are no published scores to compare with') from None
    published_scores(entry.name, split, progress=progress)
    return entry.name
