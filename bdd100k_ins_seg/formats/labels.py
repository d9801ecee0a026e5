"""BDD100K instance-segmentation labels -> COCO dicts (for the dataloaders).

The conversion is the official one (``bdd100k.label.to_coco``: categories,
RLE segmentation, ``iscrowd`` from the crowd bit) with two fixes: images get
their real ``height``/``width`` (the official bitmask mode sets them inside
worker processes and loses them; the RLE mode assumes every image is
1280x720), and files are listed in sorted order, so image and annotation ids
are the same on every machine.
"""
import json
import os
import os.path as osp
from functools import partial

from bdd100k_ins_seg.parallel import map_with_progress


def _convert_bitmask(image, mask_base):
    """The official conversion of one bitmask, its damage named: an
    unreadable file, or a category id that is not one of the 8 (which the
    official code would write into the json)."""
    from bdd100k.label.to_coco import bitmask2coco_wo_ids

    from bdd100k_ins_seg.formats.bitmask import CATEGORY_NAMES
    path = osp.join(mask_base, osp.splitext(image['file_name'])[0] + '.png')
    try:
        annotations = bitmask2coco_wo_ids(image, mask_base)  # sets the size
    except (OSError, SyntaxError, ValueError) as e:
        raise ValueError(f'bitmask {path}: not a readable PNG '
                         f'({e})') from None
    for annotation in annotations:
        if not 1 <= annotation['category_id'] <= len(CATEGORY_NAMES):
            raise ValueError(
                f'bitmask {path}: unknown category id '
                f'{annotation["category_id"]} (expected '
                f'1..{len(CATEGORY_NAMES)}) in instance '
                f'{annotation["instance_id"]}')
    return annotations, image['height'], image['width']


def bitmasks_to_coco(mask_dir: str, nproc: int = 4) -> dict:
    """COCO dict of a bitmask folder (``<stem>.png`` -> ``<stem>.jpg``)."""
    from bdd100k.common.utils import list_files, load_bdd100k_config
    from scalabel.label.transforms import get_coco_categories

    config = load_bdd100k_config('ins_seg').scalabel
    files = list_files(mask_dir, suffix='.png')
    if not files:
        raise FileNotFoundError(f'no bitmasks (*.png) in {mask_dir}')
    images = [dict(id=i, file_name=f[:-len('.png')] + '.jpg')
              for i, f in enumerate(files, start=1)]
    results = map_with_progress(
        partial(_convert_bitmask, mask_base=mask_dir), images, nproc,
        'bitmasks')
    annotations = []
    for image, (anns, height, width) in zip(images, results):
        image['height'], image['width'] = height, width
        annotations.extend(anns)
    for ann_id, annotation in enumerate(annotations, start=1):
        annotation['id'] = ann_id
    return dict(type='instances', categories=get_coco_categories(config),
                images=images, annotations=annotations)


def rles_to_coco(json_path: str, nproc: int = 4) -> dict:
    """COCO dict of a Scalabel json whose labels carry RLE masks."""
    from bdd100k.common.utils import load_bdd100k_config
    from bdd100k.label.to_scalabel import bdd100k_to_scalabel
    from scalabel.label.io import load
    from scalabel.label.to_coco import scalabel2coco_ins_seg

    config = load_bdd100k_config('ins_seg')
    frames = bdd100k_to_scalabel(load(json_path, nproc).frames, config)
    coco = scalabel2coco_ins_seg(frames, config.scalabel, nproc=nproc)
    # The RLEs know their image's size; the config's 1280x720 is a guess.
    size_of = {}
    for annotation in coco['annotations']:
        segmentation = annotation.get('segmentation')
        if isinstance(segmentation, dict) and 'size' in segmentation:
            size_of[annotation['image_id']] = segmentation['size']
    for image in coco['images']:
        if image['id'] in size_of:
            image['height'], image['width'] = size_of[image['id']]
    return coco


def write_json(obj, path: str) -> None:
    """Write ``obj`` to ``path`` atomically (temporary file, then rename)."""
    os.makedirs(osp.dirname(osp.abspath(path)), exist_ok=True)
    tmp = path + '.tmp'
    with open(tmp, 'w', encoding='utf-8') as f:
        json.dump(obj, f)
    os.replace(tmp, path)
