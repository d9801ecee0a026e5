"""BDD100K bitmasks -> colored PNGs with the project's fixed palette.

    python tools/colorize.py -i OUT/bitmasks -o OUT/colored [--nproc 4]

Every class has its own hue family and an instance index always gets the
same color (bdd100k_ins_seg.visualization.overlay.instance_color), so colored
predictions of different runs and images compare at a glance. The result
is what vis.py's -c also accepts.
"""
import argparse
import os
import os.path as osp


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('-i', '--input', required=True,
                        help='folder of bitmask PNGs')
    parser.add_argument('-o', '--output', required=True,
                        help='folder for the colored PNGs')
    parser.add_argument('--nproc', type=int, default=4,
                        help='worker processes (default 4)')
    return parser.parse_args()


def _colorize_one(task):
    import io

    from PIL import Image

    from bdd100k_ins_seg.formats.bitmask import atomic_write, read_bitmask
    from bdd100k_ins_seg.visualization.overlay import colorize
    src, dst = task
    colored = colorize(*read_bitmask(src))
    buffer = io.BytesIO()
    Image.fromarray(colored).save(buffer, format='PNG')
    atomic_write(dst, buffer.getvalue())


def main():
    args = parse_args()
    from bdd100k_ins_seg.cli import fail
    if not osp.isdir(args.input):
        fail(f'bitmask folder {args.input}', 'not found')
    names = sorted(n for n in os.listdir(args.input) if n.endswith('.png'))
    if not names:
        fail(f'bitmask folder {args.input}', 'no bitmasks (*.png) in it')
    from bdd100k_ins_seg.parallel import map_with_progress
    tasks = [(osp.join(args.input, n), osp.join(args.output, n))
             for n in names]
    os.makedirs(args.output, exist_ok=True)
    try:
        map_with_progress(_colorize_one, tasks, args.nproc, 'colorize',
                          ordered=False)
    except (ValueError, OSError) as e:  # unreadable bitmask, disk full
        fail(f'bitmask folder {args.input}', e)
    print(f'{len(tasks)} colored masks written to {args.output}')


if __name__ == '__main__':
    main()
