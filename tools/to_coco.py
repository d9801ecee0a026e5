"""BDD100K instance-segmentation labels -> COCO json (for the dataloaders).

    python tools/to_coco.py -i labels/ins_seg/bitmasks/train -o jsons/ins_seg_train_cocofmt.json
    python tools/to_coco.py -i labels/ins_seg/rles/ins_seg_train.json -o jsons/ins_seg_train_cocofmt.json

A folder of bitmask PNGs or a Scalabel json with RLE masks. The conversion
is the official one (``bdd100k.label.to_coco``: categories, RLE
segmentation, ``iscrowd`` from the crowd bit), with a progress bar and two
fixes: images get their real ``height``/``width`` (the official bitmask mode
sets them inside worker processes and loses them; the RLE mode assumes every
image is 1280x720), and files are listed in sorted order.
"""
import argparse
import os.path as osp


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('-i', '--input', required=True,
                        help='bitmask folder or RLE json (Scalabel frames)')
    parser.add_argument('-o', '--output', required=True, help='COCO json')
    parser.add_argument('--nproc', type=int, default=4,
                        help='worker processes (default 4)')
    return parser.parse_args()


def main():
    args = parse_args()
    # After parsing: --help answers without importing the stack.
    from bdd100k_ins_seg.cli import fail
    from bdd100k_ins_seg.formats.labels import (
        bitmasks_to_coco,
        rles_to_coco,
        write_json)
    if osp.isdir(args.input):
        convert = bitmasks_to_coco
    elif osp.isfile(args.input) and args.input.endswith('.json'):
        convert = rles_to_coco
    elif not osp.exists(args.input):
        fail(args.input, 'not found')
    else:
        fail(args.input, 'neither a bitmask folder nor a .json file')
    try:
        coco = convert(args.input, args.nproc)
    except (FileNotFoundError, ValueError, KeyError) as e:
        fail(args.input, e)
    write_json(coco, args.output)
    print(f'{len(coco["images"])} images, {len(coco["annotations"])} '
          f'instances -> {args.output}')


if __name__ == '__main__':
    main()
