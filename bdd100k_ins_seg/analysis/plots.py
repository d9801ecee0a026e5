"""The analysis figures, drawn with matplotlib's Agg backend into PNGs.

Every function takes plain arrays and numbers and a path, draws one figure
and closes it; nothing is shown on a screen.
"""
import math
import os
import textwrap
import os.path as osp
from typing import Dict, List, Optional, Sequence

import numpy as np

#: Colors of the error-breakdown steps (COCO-analyze's order).
STEP_COLORS = dict(C75='#d9d9d9', C50='#4f83bd', Loc='#bf4f4c',
                   Sim='#5ce661', Oth='#8063a3', BG='#ff9900',
                   FN='#f2d13d')
#: Color of model A and model B in comparisons.
PAIR_COLORS = ('#4f83bd', '#ff9900')
DPI = 80


def pyplot():
    """matplotlib.pyplot on the Agg backend (no display needed)."""
    import matplotlib
    matplotlib.use('Agg', force=True)
    import matplotlib.pyplot as plt
    return plt


def _save(fig, path: str) -> str:
    os.makedirs(osp.dirname(osp.abspath(path)), exist_ok=True)
    tmp = path + '.tmp.png'
    fig.savefig(tmp, dpi=DPI)
    pyplot().close(fig)
    os.replace(tmp, path)
    return path


def _grid(n: int, cols: int = 4):
    plt = pyplot()
    cols = max(1, min(cols, n))
    rows = math.ceil(n / cols)
    height = 3.2 * rows + 0.7
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, height),
                             squeeze=False)
    # Fixed margins: matplotlib's tight_layout costs a second rendering.
    fig.subplots_adjust(left=0.3 / cols, right=1 - 0.05 / cols,
                        bottom=0.5 / height, top=1 - 0.8 / height,
                        wspace=0.35, hspace=0.45)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, list(axes.flat[:n])


def _suptitle(fig, text: str, size: int = 10) -> None:
    """A figure title wrapped to the figure's width, the panels moved
    down to make room for its lines."""
    width, height = fig.get_size_inches()
    lines = textwrap.wrap(text, max(20, int(width * 125 / size)))
    fig.suptitle('\n'.join(lines), fontsize=size)
    fig.subplots_adjust(top=1 - (0.45 + 0.18 * len(lines)) / height)


def _ap_text(value) -> str:
    return 'n/a' if value is None or value != value else f'{value:.1f}'


def pr_curves(rec_thrs: np.ndarray, curves: Dict[str, Dict[str, np.ndarray]],
              aps: Dict[str, Dict[str, float]], path: str) -> str:
    """One panel per class: precision over recall at IoU .5, .75 and the
    mean of the 10 thresholds, the official AP of each in the legend.

    Args:
        curves: class -> {"iou50", "iou75", "iou"} 101-point arrays (-1:
            no GT).
        aps: class -> {"iou50", "iou75", "iou"}: official AP50, AP75, AP.
    """
    styles = (('iou50', 'IoU .50', '-'), ('iou75', 'IoU .75', '--'),
              ('iou', 'IoU .50:.95', ':'))
    fig, axes = _grid(len(curves))
    for ax, name in zip(axes, curves):
        ax.set_title(name)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
        ax.set_xlabel('recall')
        ax.set_ylabel('precision')
        ax.grid(alpha=0.3)
        if curves[name]['iou50'][0] <= -1:
            ax.text(0.5, 0.5, 'no GT instance', ha='center', va='center',
                    transform=ax.transAxes, color='gray')
            continue
        for key, label, style in styles:
            ax.plot(rec_thrs, np.clip(curves[name][key], 0, None), style,
                    label=f'{label}: AP {_ap_text(aps[name][key])}')
        ax.legend(loc='lower left', fontsize=8)
    _suptitle(fig, 'Precision-recall by class (official accumulation, '
              'area all, 100 detections)', 12)
    return _save(fig, path)


def confusion(matrix: np.ndarray, names: Sequence[str], score_thr: float,
              path: str) -> str:
    """The confusion matrix, counts and row-normalised, side by side."""
    plt = pyplot()
    matrix = np.asarray(matrix)
    fig, axes = plt.subplots(1, 2, figsize=(16, 7.4))
    fig.subplots_adjust(left=0.08, right=0.99, bottom=0.17, top=0.9,
                        wspace=0.35)
    rows = matrix.sum(axis=1, keepdims=True)
    with np.errstate(divide='ignore', invalid='ignore'):
        share = np.where(rows > 0, matrix / np.maximum(rows, 1) * 100, 0.0)
    for ax, data, title, fmt in (
            (axes[0], matrix, 'counts', '{:d}'),
            (axes[1], share, 'share of the GT row (%)', '{:.0f}')):
        shown = np.log1p(data) if data is matrix else data
        ax.imshow(shown, cmap='Blues')
        ax.set_xticks(range(len(names)))
        ax.set_yticks(range(len(names)))
        ax.set_xticklabels(names, rotation=45, ha='right')
        ax.set_yticklabels(names)
        ax.set_xlabel('predicted class')
        ax.set_ylabel('GT class')
        ax.set_title(title)
        top = shown.max() if shown.size else 0
        for i in range(data.shape[0]):
            for j in range(data.shape[1]):
                value = data[i, j]
                if value == 0:
                    continue
                text = fmt.format(int(value) if fmt == '{:d}' else value)
                ax.text(j, i, text, ha='center', va='center', fontsize=8,
                        color='white' if shown[i, j] > 0.6 * top else
                        'black')
    fig.suptitle(f'Confusion matrix (mask IoU >= 0.5, score >= {score_thr};'
                 ' last row: predictions matching no GT, last column: GT '
                 'no prediction matched)', fontsize=11)
    return _save(fig, path)


def error_breakdown(rec_thrs: np.ndarray, curves: Dict[str, np.ndarray],
                    aps: Dict[str, List[float]], names: Sequence[str],
                    path: str) -> str:
    """COCO-analyze's stacked areas, one panel per class (first: the mean
    over the classes).

    Args:
        curves: step -> list of 101-point arrays, one per panel (-1: no
            GT).
        aps: step -> list of AP x100, one per panel.
    """
    steps = list(curves)
    fig, axes = _grid(len(names), cols=3)
    for p, (ax, name) in enumerate(zip(axes, names)):
        ax.set_title(name)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.0)
        ax.set_xlabel('recall')
        ax.set_ylabel('precision')
        if curves[steps[0]][p][0] <= -1:
            ax.text(0.5, 0.5, 'no GT instance', ha='center', va='center',
                    transform=ax.transAxes, color='gray')
            continue
        below = np.zeros(len(rec_thrs))
        for step in steps:
            curve = np.maximum(np.clip(curves[step][p], 0, 1), below)
            ax.fill_between(rec_thrs, below, curve, color=STEP_COLORS[step],
                            label=f'[{aps[step][p] / 100:.3f}] {step}')
            ax.plot(rec_thrs, curve, color='black', linewidth=0.5)
            below = curve
        handles, labels = ax.get_legend_handles_labels()
        ax.legend(handles[::-1], labels[::-1], loc='lower left', fontsize=7)
    _suptitle(fig, 'Error breakdown (COCO analyze): precision at IoU .75, '
              '.5, .1 (Loc), then with confusions within the '
              'super-category (Sim) or with any class (Oth) forgiven, '
              'every false positive forgiven (BG), every miss recovered '
              '(FN)')
    return _save(fig, path)


def ap_bars(names: Sequence[str], a: Sequence[float], b: Sequence[float],
            labels: Sequence[str], path: str, metric: str = 'AP') -> str:
    """Per-class ``metric`` of two results side by side, B - A above."""
    plt = pyplot()
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(max(8, 1.1 * len(names)), 4.6))
    fig.subplots_adjust(left=0.08, right=0.98, bottom=0.2, top=0.9)
    a = np.array(a, float)
    b = np.array(b, float)
    for offset, values, label, color in ((-0.2, a, labels[0],
                                          PAIR_COLORS[0]),
                                         (0.2, b, labels[1],
                                          PAIR_COLORS[1])):
        ax.bar(x + offset, np.nan_to_num(values), 0.4, label=label,
               color=color)
    top = np.nanmax(np.concatenate([a, b, [1.0]]))
    for i in range(len(names)):
        if a[i] == a[i] and b[i] == b[i]:
            delta = b[i] - a[i]
            ax.text(i, max(np.nan_to_num(a[i]), np.nan_to_num(b[i])) +
                    0.02 * top, f'{delta:+.1f}', ha='center', va='bottom',
                    fontsize=9, color='#2a7d2a' if delta >= 0 else '#b22222')
    ax.set_xticks(x)
    ax.set_xticklabels(names, rotation=30, ha='right')
    ax.set_ylabel(f'{metric} (x100)')
    ax.set_ylim(0, top * 1.15)
    ax.legend(fontsize=8)
    ax.set_title(f'{metric} by class: {labels[0]} vs {labels[1]} '
                 '(numbers: B - A)')
    ax.grid(axis='y', alpha=0.3)
    return _save(fig, path)


def curves(series: Dict[str, Dict[str, List]], title: str, ylabel: str,
           path: str, logy: bool = False, panels: Optional[List[str]] = None
           ) -> str:
    """Line plots over iterations: ``series`` is panel -> {legend label:
    (xs, ys)}; one panel each (``panels``: their order)."""
    names = panels or list(series)
    fig, axes = _grid(len(names), cols=min(3, len(names)))
    for ax, name in zip(axes, names):
        for label, (xs, ys) in series[name].items():
            ax.plot(xs, ys, label=label, marker='o' if len(xs) < 12 else
                    None, markersize=3)
        ax.set_title(name)
        ax.set_xlabel('iteration')
        ax.set_ylabel(ylabel)
        if logy:
            ax.set_yscale('log')
        ax.grid(alpha=0.3)
        if len(series[name]) > 1:
            ax.legend(fontsize=7)
    _suptitle(fig, title, 12)
    return _save(fig, path)


__all__ = ['pyplot', 'pr_curves', 'confusion', 'error_breakdown', 'ap_bars',
           'curves', 'STEP_COLORS']
