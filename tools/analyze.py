"""Error analysis on the official protocol, in numbers and pictures.

    python tools/analyze.py -g GT -r PRED [--score-file SCORE] -o OUT
        [--images IMG_DIR] [--score-thr 0.3] [--nproc N]
    python tools/analyze.py --from-run OUT_OF_TEST_PY -o OUT
    python tools/analyze.py --log WORK_DIR [WORK_DIR ...] -o OUT
    python tools/analyze.py --compare A B -o OUT

GT and PRED are bitmask folders (with the predictions' score.json) or RLE
json files (one of each: the bitmasks are converted to RLE). OUT gets summary.json (the official result json, the
per-class precision-recall arrays of the official accumulation, the
confusion matrix, COCO-analyze's error breakdown, per-image counts), the
figures (pr_curves.png, confusion_matrix.png, error_breakdown.png), with
--images a gallery of the worst and best images, and index.html, a page
that opens from disk.

--from-run reads a test.py --format-dir folder: its predictions, and the GT
and images its run recorded. --log draws mmengine's scalar logs of training
runs (losses, learning rate, validation AP by class), several runs
overlaid. --compare puts two analysis folders (or two result json files)
side by side: AP by class with the differences, and the images where they
differ most.
"""
import argparse
import os.path as osp

DEFAULT_SCORE_THR = 0.3


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split('\n')[0],
        epilog='\n\n'.join(__doc__.split('\n\n')[2:]),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument('-r', '--result',
                      help='predictions: bitmask folder or RLE json')
    mode.add_argument('--from-run', metavar='RUN',
                      help='a test.py --format-dir folder')
    mode.add_argument('--log', nargs='+', metavar='WORK_DIR',
                      help='training work folders (mmengine scalar logs)')
    mode.add_argument('--compare', nargs=2, metavar=('A', 'B'),
                      help='two analysis folders or result json files')
    parser.add_argument('-g', '--gt',
                        help='GT: bitmask folder or RLE json (with -r; '
                        '--from-run: default the run\'s)')
    parser.add_argument('--score-file',
                        help="the predictions' score.json (bitmask folders)")
    parser.add_argument('-o', '--out', required=True, help='output folder')
    parser.add_argument('--images',
                        help='image folder: adds the gallery of the worst '
                        'and best images (--from-run: default the run\'s)')
    parser.add_argument('--score-thr', type=float, default=DEFAULT_SCORE_THR,
                        help='predictions counted in the confusion matrix, '
                        'per-image counts and gallery (default '
                        f'{DEFAULT_SCORE_THR}; the AP uses all)')
    parser.add_argument('--num', type=int, default=6,
                        help='images in each gallery (default 6)')
    parser.add_argument('--nproc', type=int, default=None,
                        help='processes of the evaluation (default: the '
                        'CPU cores available, at most 8)')
    args = parser.parse_args(argv)
    if args.result and not args.gt:
        parser.error('-r/--result needs -g/--gt')
    if (args.log or args.compare) and (args.gt or args.score_file or
                                       args.images):
        parser.error('--log/--compare take no -g, --score-file or --images')
    if not 0 <= args.score_thr <= 1:
        parser.error(f'--score-thr: {args.score_thr} is not in [0, 1]')
    for value, flag in ((args.num, '--num'), (args.nproc, '--nproc')):
        if value is not None and value < 1:
            parser.error(f'{flag}: {value} is not a positive number')
    return args


def from_run(args):
    """(gt, result, score file, images) of a test.py output folder."""
    import json

    from bdd100k_ins_seg.cli import fail
    run = args.from_run
    if not osp.isdir(run):
        fail(f'--from-run {run}', 'not a folder')
    manifest = {}
    if osp.isfile(osp.join(run, '.run.json')):
        with open(osp.join(run, '.run.json'), encoding='utf-8') as f:
            manifest = json.load(f)
    gt = args.gt or manifest.get('gt')
    if not gt:
        fail(f'--from-run {run}', 'its run recorded no GT (a --format-only '
             'run): give it with -g')
    images = args.images or manifest.get('img_dir')
    if images and not osp.isdir(images):
        images = None if not args.images else images
    if osp.isfile(osp.join(run, 'score.json')) and \
            osp.isdir(osp.join(run, 'bitmasks')) and osp.isdir(gt):
        return gt, osp.join(run, 'bitmasks'), osp.join(run,
                                                       'score.json'), images
    if osp.isfile(osp.join(run, 'rles.json')):
        return gt, osp.join(run, 'rles.json'), None, images
    fail(f'--from-run {run}', 'holds no finished predictions (score.json + '
         'bitmasks/, or rles.json)')


def main(argv=None):
    args = parse_args(argv)
    from bdd100k_ins_seg.cli import InputError, fail
    try:
        if args.log:
            from bdd100k_ins_seg.analysis.logs import plot_logs
            written = plot_logs(args.log, args.out)
            print(f'{len(written)} figures written to {args.out}: ' +
                  ', '.join(sorted(osp.basename(p)
                                   for p in written.values())))
            return
        if args.compare:
            from bdd100k_ins_seg.analysis.compare import compare
            compare(*args.compare, args.out, num=args.num)
            print(f'comparison written to {osp.join(args.out, "index.html")}')
            return
        if args.from_run:
            gt, result, score_file, images = from_run(args)
        else:
            gt, result = args.gt, args.result
            score_file, images = args.score_file, args.images
        from bdd100k_ins_seg.analysis.report import analyze
        summary = analyze(gt, result, args.out, score_file=score_file,
                          img_dir=images, score_thr=args.score_thr,
                          nproc=args.nproc, num_gallery=args.num)
    except InputError as e:
        fail(e.what, e.why)
    except (OSError, ValueError) as e:
        fail(args.out, e)
    overall = summary['official']['AP'][1]['OVERALL']
    print(f'mask AP {overall:.1f} on {len(summary["images"])} images; '
          f'analysis written to {osp.join(args.out, "index.html")}')


if __name__ == '__main__':
    main()
