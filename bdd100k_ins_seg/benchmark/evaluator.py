"""Stage d: our evaluator against the official one, same files, one
process each, the whole ``DetResult`` compared (an error if it differs)."""
import contextlib
import io
import json
import logging
import os.path as osp

from bdd100k_ins_seg.benchmark import SETTINGS, make_row, median_ms
from bdd100k_ins_seg.benchmark.synthetic import write_case


def run(config: str, device: str, repeats: int, work_dir: str) -> list:
    """``config`` and ``device`` are not used: the evaluator reads PNGs on
    the CPU. Synthetic split: ``SETTINGS['images']`` images of
    ``SETTINGS['size']`` with ~20 GT and ~60 predictions each."""
    from bdd100k.common.logger import logger
    from bdd100k.common.utils import list_files, load_bdd100k_config
    from bdd100k.eval.ins_seg import evaluate_ins_seg as official

    from bdd100k_ins_seg.evaluation.bitmask_eval import (
        evaluate_ins_seg as ours)

    num = SETTINGS['images']
    case = write_case(osp.join(work_dir, 'split'), seed=0, num_images=num,
                      size=tuple(SETTINGS['size']), num_gt=20, num_pred=60,
                      max_frac=0.3)
    gt = list_files(case['gt_dir'], '.png', with_prefix=True)
    pred = list_files(case['pred_dir'], '.png', with_prefix=True)
    config = load_bdd100k_config('ins_seg').scalabel
    results = {}

    def timed(name, fn):
        def call():
            # Both print progress and pycocotools' messages: not timed
            # differently, kept off the table.
            with contextlib.redirect_stdout(io.StringIO()), \
                    contextlib.redirect_stderr(io.StringIO()):
                results[name] = json.dumps(dict(fn()))
        return call

    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        ours_ms = median_ms(timed('ours', lambda: ours(
            gt, pred, case['score_file'], nproc=1, config=config)),
            repeats) / num
        official_ms = median_ms(timed('official', lambda: official(
            gt, pred, case['score_file'], config, nproc=1)), repeats) / num
    finally:
        logger.setLevel(level)
    if results['ours'] != results['official']:
        raise RuntimeError('evaluator: the DetResult differs from the '
                           "official evaluator's on the synthetic split")
    width, height = SETTINGS['size']
    return [make_row(
        'd', f'evaluator, {width}x{height}, ~20 GT / ~60 predictions, '
        '1 process (identical DetResult)', ours_ms,
        'bdd100k.eval.ins_seg, 1 process', official_ms)]
