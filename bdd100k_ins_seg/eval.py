"""Score BDD100K instance-segmentation bitmasks: the official numbers, faster.

``python -m bdd100k_ins_seg.eval -g GT_DIR -r PRED_DIR --score-file
SCORE_JSON [--out-file OUT_JSON] [--nproc N]`` takes the flags of
``python -m bdd100k.eval.run -t ins_seg`` and prints and writes the same
result (:mod:`bdd100k_ins_seg.evaluation.bitmask_eval`).

As the official command, it needs a prediction for every GT bitmask;
``--only-predicted`` scores the GT images that have one instead (a part of
the split), and says how many of how many.

``-g GT.json -r PRED.json`` (no score file) scores the other official
format, Scalabel frames with RLE masks, by the official code
(:mod:`bdd100k_ins_seg.evaluation.rle_eval`): the result json of ``python
-m bdd100k.eval.run -t ins_seg`` on the same files.
"""
import argparse
import json
import os
import os.path as osp
import sys

PROG = 'python -m bdd100k_ins_seg.eval'


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        prog=PROG,
        description='Score BDD100K instance-segmentation bitmasks with the '
        'official protocol (the numbers of python -m bdd100k.eval.run -t '
        'ins_seg, computed faster).')
    parser.add_argument('--task', '-t', default='ins_seg',
                        choices=['ins_seg'],
                        help='only ins_seg (accepted for compatibility with '
                        'the official command line)')
    parser.add_argument('--gt', '-g', required=True,
                        help='folder of GT bitmask PNGs, or an RLE json')
    parser.add_argument('--result', '-r', required=True,
                        help='folder of prediction bitmask PNGs, or an RLE '
                        'json (Scalabel frames; test.py --out-format rle)')
    parser.add_argument('--score-file',
                        help="the predictions' score.json (bitmasks; an RLE "
                        'json holds its scores)')
    parser.add_argument('--config', '-c', default=None,
                        help='bdd100k label config (default: ins_seg)')
    parser.add_argument('--nproc', type=int, default=None,
                        help='processes (default: the CPU cores available, '
                        'at most 8)')
    parser.add_argument('--out-file', default=None,
                        help='write the result json here (as the official '
                        '--out-file)')
    parser.add_argument('--only-predicted', action='store_true',
                        help='score only the GT images that have a '
                        'prediction bitmask (default: every GT bitmask '
                        'needs one, as in the official evaluator)')
    parser.add_argument('--quiet', '-q', action='store_true',
                        help='do not print the table')
    args = parser.parse_args(argv)
    if args.nproc is not None and args.nproc < 1:
        parser.error(f'--nproc: must be at least 1, got {args.nproc}')
    return args


def fail(what, why):
    sys.exit(f'{PROG}: error: {what}: {why}')


def main_rle(args):
    """Score two RLE json files (the official ``run_rle`` path)."""
    for flag, path in (('--gt', args.gt), ('--result', args.result)):
        if not (osp.isfile(path) and path.endswith('.json')):
            fail(flag, f'not an RLE .json file: {path} (give two RLE json '
                 'files, or two bitmask folders and --score-file)')
    if args.score_file:
        fail('--score-file', 'RLE json holds its scores: leave it out')
    from bdd100k_ins_seg.evaluation.rle_eval import evaluate_rle_files
    from bdd100k_ins_seg.formats.rle import read_rle_file
    for flag, path in (('--gt', args.gt), ('--result', args.result)):
        try:  # named before the official code stops on it
            read_rle_file(path)
        except (OSError, ValueError) as e:
            fail(f'{flag} {path}', e)
    from bdd100k_ins_seg.evaluation.bitmask_eval import quiet_evaluator
    try:
        with quiet_evaluator():  # pycocotools' steps: the table follows
            result = evaluate_rle_files(args.gt, args.result,
                                        args.nproc or 1)
    except (ValueError, KeyError, OSError, AssertionError) as e:
        fail('evaluation', e)
    report(result, args)


def report(result, args) -> None:
    """Print the result table (unless ``--quiet``) and write ``--out-file``
    atomically, as the official CLI's json."""
    if not args.quiet:
        print(result, flush=True)
    if args.out_file:
        folder = osp.dirname(args.out_file)
        if folder:
            os.makedirs(folder, exist_ok=True)
        tmp = args.out_file + '.tmp'
        with open(tmp, 'w', encoding='utf-8') as f:
            json.dump(dict(result), f, indent=2)
        os.replace(tmp, args.out_file)


def main(argv=None):
    args = parse_args(argv)
    if args.gt.endswith('.json') or args.result.endswith('.json'):
        return main_rle(args)
    if not args.score_file:
        fail('--score-file', 'bitmask predictions need their score.json')
    for flag, path in (('--gt', args.gt), ('--result', args.result)):
        if not osp.isdir(path):
            fail(flag, f'not a folder: {path}')
    if not osp.isfile(args.score_file):
        fail('--score-file', f'not found: {args.score_file}')
    from bdd100k_ins_seg.formats.bitmask import load_score_file
    try:  # what the evaluator reads of it, named before it starts
        load_score_file(args.score_file)
    except (OSError, ValueError) as e:
        fail(f'score file {args.score_file}', e)

    from bdd100k.common.utils import list_files, load_bdd100k_config

    from bdd100k_ins_seg.evaluation.bitmask_eval import (evaluate_ins_seg,
                                                         gt_to_score)
    gt_paths = list_files(args.gt, '.png', with_prefix=True)
    pred_paths = list_files(args.result, '.png', with_prefix=True)
    if not gt_paths:
        fail('--gt', f'no bitmask PNGs in {args.gt}')
    if not pred_paths:
        fail('--result', f'no bitmask PNGs in {args.result}')
    try:
        scored = gt_to_score(gt_paths, pred_paths, args.only_predicted)
    except ValueError as e:
        fail(f'--result {args.result}', e)
    if len(scored) < len(gt_paths):
        print(f'scoring {len(scored)} of the {len(gt_paths)} GT images '
              f'(--only-predicted: those with a prediction bitmask in '
              f'{args.result})', flush=True)
    gt_paths = scored
    try:
        config = load_bdd100k_config(args.config or 'ins_seg').scalabel
        result = evaluate_ins_seg(gt_paths, pred_paths, args.score_file,
                                  nproc=args.nproc, config=config)
    except (ValueError, OSError) as e:
        fail('evaluation', e)
    report(result, args)


if __name__ == '__main__':
    main()
