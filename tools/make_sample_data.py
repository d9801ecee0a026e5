"""Write the embedded sample dataset (small driving scenes, BDD100K layout).

    python tools/make_sample_data.py --out data/bdd100k_sample --seed 0

The same seed gives the same files, byte for byte. See
``bdd100k_ins_seg/formats/sample_data.py`` for what the scenes contain.
"""
import argparse

# bdd100k_ins_seg.formats.sample_data.DEFAULT_COUNTS, repeated so that --help does
# not import the package (a test checks that they agree).
DEFAULT_COUNTS = dict(train=300, val=60, test=20)
# ... and the names of its SCENE_MIXES
SCENE_MIXES = ('default', 'city')


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--out', required=True,
                        help='output folder (must not exist or be empty)')
    parser.add_argument('--seed', type=int, default=0,
                        help='random seed (default 0, what the demo uses)')
    for split, n in DEFAULT_COUNTS.items():
        parser.add_argument(f'--num-{split}', type=int, default=n,
                            help=f'images in {split} (default {n})')
    parser.add_argument('--width', type=int, default=320,
                        help='image width (default 320)')
    parser.add_argument('--height', type=int, default=192,
                        help='image height (default 192)')
    parser.add_argument('--scene-mix', choices=SCENE_MIXES,
                        default='default',
                        help='what the scenes hold: default (the demo\'s '
                        'sunny road, mostly cars) or city (a dim street, '
                        'more people, riders and buses)')
    parser.add_argument('--nproc', type=int, default=2,
                        help='processes that draw the scenes and convert the '
                        'labels to COCO (default 2)')
    args = parser.parse_args(argv)
    for split in ('train', 'val'):  # labeled splits get a COCO json
        if getattr(args, f'num_{split}') < 1:
            parser.error(f'--num-{split}: must be at least 1 (a labeled '
                         'split needs images for its COCO json)')
    return args


def main(argv=None):
    args = parse_args(argv)
    from bdd100k_ins_seg.cli import fail
    from bdd100k_ins_seg.formats.sample_data import generate_sample_dataset
    counts = dict(train=args.num_train, val=args.num_val, test=args.num_test)
    if args.width < 64 or args.height < 64:
        fail('--width/--height', 'must be at least 64 pixels')
    try:
        num = generate_sample_dataset(args.out, seed=args.seed, counts=counts,
                                      size=(args.width, args.height),
                                      nproc=args.nproc,
                                      scene_mix=args.scene_mix)
    except FileExistsError as e:
        fail('--out', e)
    except ValueError as e:
        fail('--num-train/--num-val/--num-test', e)
    print(f'wrote {args.out}: ' + ', '.join(
        f'{counts[s]} {s} images' + (f' ({num[s]} instances)' if s in num
                                     else '') for s in counts))


if __name__ == '__main__':
    main()
