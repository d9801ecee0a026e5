"""The BDD100K model zoo from the command line.

  python tools/model_zoo.py list [--params]       the 26 models (+ built sizes)
  python tools/model_zoo.py download NAME [...] [--what KINDS]
                                                  fetch + check published files
  python tools/model_zoo.py verify [NAME ...]     re-check downloaded files
  python tools/model_zoo.py compare NAME [RESULT.json] [--split val|test]
                                    [--fail-above X]   ours vs published
  python tools/model_zoo.py readme [--check]      regenerate / check README

NAME is a model name as `list` prints it (with or without the
`_ins_seg_bdd100k` suffix). KINDS: weights (default), scores-val,
scores-test, preds, visuals, comma-separated, or all. Files go to
~/.cache/bdd100k_ins_seg/checkpoints (or $BDD100K_INS_SEG_CACHE);
$BDD100K_INS_SEG_MIRROR replaces the download host with a mirror URL or a
local folder in the host's layout (models/, scores-val/, ...). RESULT.json
is the official evaluator's --out-file (also written by test.py --eval
--out-file). The catalogue is configs/ins_seg/metafile.yml.
"""
import argparse
import sys

# bdd100k_ins_seg.zoo, imported by main() after the arguments are parsed (so
# that --help does not wait for torch and mmdet).
zoo = None


def cmd_list(args):
    catalogue = zoo.load_catalogue()
    width = max(len(name) for name in catalogue)
    header = (f'{"name":<{width}} {"epochs":>6} {"batch":>5} {"MS":>3} '
              f'{"mask AP val":>11} {"box AP val":>10}')
    if args.params:
        header += f' {"params (built)":>15}'
    print(header)
    mismatches = []
    for entry in catalogue.values():
        row = (f'{entry.name:<{width}} {entry.epochs:>6} '
               f'{entry.batch_size:>5} '
               f'{"yes" if entry.ms_train else "no":>3} '
               f'{entry.results[("val", "mask")]:>11.2f} '
               f'{entry.results[("val", "box")]:>10.2f}')
        if args.params:
            # Builds each model (a few seconds each on CPU, nothing loaded).
            from bdd100k_ins_seg.plugin.models import count_parameters
            count = count_parameters(entry.config_path)
            row += f' {count:>15,}'
            if count != entry.parameters:
                mismatches.append(entry.name)
                row += f'  (metafile says {entry.parameters:,})'
        print(row, flush=True)
    if mismatches:
        from bdd100k_ins_seg.cli import error_line
        print(error_line(', '.join(mismatches), 'parameter counts differ '
                         'from the metafile'), file=sys.stderr)
        return 1
    return 0


def cmd_download(args):
    kinds = zoo.parse_kinds(args.what)
    for name in args.names:
        entry = zoo.get_entry(name)
        for kind in kinds:
            print(zoo.fetch(entry.name, kind, progress=not args.quiet),
                  flush=True)
            if kind == 'preds':
                folder = zoo.predictions_dir(entry)
                for score_file, bitmasks, count in \
                        zoo.local_prediction_sets(folder):
                    print(f'  {count} bitmasks in {bitmasks}, scores in '
                          f'{score_file}')
    return 0


def cmd_verify(args):
    catalogue = zoo.load_catalogue()
    names = args.names or list(catalogue)
    kinds = zoo.parse_kinds(args.what) if args.what else zoo.KINDS
    failed = 0
    checked = 0
    for name in names:
        found = 0
        for kind in kinds:
            status, message = zoo.verify(name, kind)
            if status == 'missing' and not args.what:
                continue  # without --what: check what has been downloaded
            found += 1
            print(message)
            failed += status != 'ok'
        if args.names and not found:
            # A named model of which nothing was downloaded.
            status, message = zoo.verify(name)
            print(message)
            failed += 1
        checked += found
    if not args.names and not checked:
        print(f'nothing downloaded in {zoo.cache_dir()}')
    return 1 if failed else 0


def cmd_compare(args):
    from bdd100k_ins_seg.zoo import compare
    from bdd100k_ins_seg.evaluation.results import ResultFormatError
    try:
        outcome = compare.run(args.name, args.result, split=args.split,
                              fail_above=args.fail_above,
                              progress=not args.quiet)
    except ResultFormatError as e:
        raise zoo.ZooError(str(e)) from None
    print(outcome.text)
    return outcome.status


def cmd_readme(args):
    readme = zoo.REPO_ROOT / 'README.md'
    text = readme.read_text(encoding='utf-8')
    updated = zoo.replace_table(text, zoo.render_tables())
    if args.check:
        if updated != text:
            from bdd100k_ins_seg.cli import error_line
            print(error_line(readme.name, f'the model table differs from '
                             f'{zoo.METAFILE_NAME}; run '
                             '`python tools/model_zoo.py readme`'),
                  file=sys.stderr)
            return 1
        print(f'{readme.name} model table matches the metafile')
        return 0
    if updated != text:
        readme.write_text(updated, encoding='utf-8')
        print(f'updated the model table in {readme}')
    else:
        print(f'{readme.name} model table already up to date')
    return 0


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split('\n\n')[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split('\n\n', 1)[1])
    sub = parser.add_subparsers(dest='command', required=True)
    p = sub.add_parser('list', help='list the models of the catalogue')
    p.add_argument('--params', action='store_true',
                   help='build every model and print its parameter count')
    p.set_defaults(func=cmd_list)
    p = sub.add_parser('download',
                       help='download and check published files')
    p.add_argument('names', nargs='+', metavar='NAME')
    p.add_argument('--what', default='weights', metavar='KINDS',
                   help='comma-separated: weights, scores-val, scores-test, '
                   'preds (also extracted next to the zip), visuals; or all '
                   '(default: weights)')
    p.add_argument('--quiet', action='store_true', help='no progress bar')
    p.set_defaults(func=cmd_download)
    p = sub.add_parser('verify', help='check downloaded files again')
    p.add_argument('names', nargs='*', metavar='NAME',
                   help='default: every downloaded model')
    p.add_argument('--what', metavar='KINDS',
                   help='these kinds only, a missing one is an error '
                   '(default: every kind that was downloaded)')
    p.set_defaults(func=cmd_verify)
    p = sub.add_parser('compare',
                       help='a result file against the published scores')
    p.add_argument('name', metavar='NAME')
    p.add_argument('result', nargs='?', metavar='RESULT.json',
                   help='the evaluator\'s --out-file (without it: the '
                   'published per-class table)')
    p.add_argument('--split', choices=['val', 'test'], default='val',
                   help='published scores of this split (default val)')
    p.add_argument('--fail-above', type=float, metavar='X',
                   help='exit 1 when some |delta AP| exceeds X')
    p.add_argument('--quiet', action='store_true', help='no progress bar')
    p.set_defaults(func=cmd_compare)
    p = sub.add_parser('readme', help='regenerate the README model table')
    p.add_argument('--check', action='store_true',
                   help='only check it; exit 1 when it is out of date')
    p.set_defaults(func=cmd_readme)
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    global zoo
    from bdd100k_ins_seg import zoo
    from bdd100k_ins_seg.cli import error_line
    try:
        return args.func(args)
    except zoo.ZooError as e:
        print(error_line(args.command, e), file=sys.stderr)
        return 2


if __name__ == '__main__':
    sys.exit(main())
