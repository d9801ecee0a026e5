"""BDD100K instance segmentation datasets; they check every image before
any training or inference starts (:mod:`bdd100k_ins_seg.formats.images`)."""
import contextlib
import io
import os.path as osp
import time
from typing import List

from mmdet.datasets import BaseDetDataset, CocoDataset
from mmdet.registry import DATASETS

from bdd100k_ins_seg.formats.bitmask import (BDD100K_INS_SEG_CLASSES,
                                             BDD100K_INS_SEG_PALETTE)
from bdd100k_ins_seg.formats.images import (DataFileError, formats_read,
                                            list_images, skipped_message,
                                            turned_by_exif,
                                            check_image_files)

#: (folder, skipped files) already reported by this process: a folder
#: built twice (test.py's checks, then its run) says it once.
_REPORTED_SKIPS = set()


@DATASETS.register_module()
class BDD100KInsSegDataset(CocoDataset):
    """COCO-format json made by ``bdd100k.label.to_coco`` (category ids 1..8,
    RLE masks, ``iscrowd`` from the crowd bit).

    When the dataset is built (at the start of training or testing, before
    the first iteration), every image it will serve is checked with
    :func:`check_image_file`: a missing, unreadable or cut-short file, or
    one whose size differs from the json's, is named then, not when the
    data loader reaches it. ``check_images=False``
    skips that; so does a storage backend (``backend_args``), whose files
    are not local paths.
    """

    METAINFO = dict(
        classes=BDD100K_INS_SEG_CLASSES, palette=BDD100K_INS_SEG_PALETTE)

    def __init__(self, *args, check_images: bool = True, **kwargs):
        self.check_images = check_images
        super().__init__(*args, **kwargs)

    def load_data_list(self) -> List[dict]:
        """mmdet's, refusing a json of other classes: mmdet would drop the
        annotations of a category that is not one of the 8 (a BDD100K
        detection json's traffic lights and signs, say) without a word."""
        self._unknown = {}
        # pycocotools prints four lines ("loading annotations into
        # memory...") per json: not for the console.
        with contextlib.redirect_stdout(io.StringIO()):
            data_list = super().load_data_list()
        classes = self.metainfo['classes']
        if len(self.cat_ids) != len(classes):
            raise DataFileError(
                self.ann_file, f'its categories name '
                f'{len(self.cat_ids)} of the {len(classes)} BDD100K '
                f'instance segmentation classes ({", ".join(classes)})')
        if self._unknown:
            ids = ', '.join(
                f'{k} ({n} annotation{"s" * (n != 1)})' for k, n in
                sorted(self._unknown.items(), key=lambda kv: str(kv[0])))
            raise DataFileError(
                self.ann_file, 'annotations of a category that is not one '
                f'of the {len(classes)} classes, by id: {ids} (a json of '
                'another task? tools/to_coco.py makes this one)')
        return data_list

    def parse_data_info(self, raw_data_info: dict):
        known = self.cat2label
        for ann in raw_data_info['raw_ann_info']:
            if ann.get('category_id') not in known:
                key = ann.get('category_id')
                self._unknown[key] = self._unknown.get(key, 0) + 1
        return super().parse_data_info(raw_data_info)

    def full_init(self) -> None:
        if self._fully_initialized:
            return
        super().full_init()
        if not self.check_images or self.backend_args:
            return
        start = time.perf_counter()
        infos = [self.get_data_info(i) for i in range(len(self))]
        sizes = check_image_files([info['img_path'] for info in infos])
        for info, size in zip(infos, sizes):
            listed = (info.get('width'), info.get('height'))
            if None not in listed and tuple(listed) != size and not (
                    tuple(listed) == size[::-1]
                    and turned_by_exif(info['img_path'])):
                raise DataFileError(
                    self.ann_file, f'lists {info["img_path"]} at '
                    f'{listed[0]}x{listed[1]}, but the image is '
                    f'{size[0]}x{size[1]} (labels of another image, or a '
                    'bitmask of the wrong size?)')
        if len(infos) > 1000:
            from mmengine.logging import print_log
            print_log(f'{type(self).__name__}: {len(infos)} images checked '
                      f'in {time.perf_counter() - start:.1f} s',
                      logger='current')


@DATASETS.register_module()
class BDD100KImageFolderDataset(BaseDetDataset):
    """Every image of a folder, with no annotations (e.g. the 2K test split).

    ``data_prefix=dict(img=...)`` is the folder; images
    (:data:`~bdd100k_ins_seg.formats.images.IMG_EXTENSIONS`, any case) are
    listed in sorted order and ``img_id`` is the file stem. Other files are
    skipped with a warning that names them. Sizes are read from the file
    headers, so an unreadable image fails here, naming the file.
    """

    METAINFO = dict(
        classes=BDD100K_INS_SEG_CLASSES, palette=BDD100K_INS_SEG_PALETTE)

    def __init__(self, *args, ann_file: str = '', **kwargs):
        kwargs.setdefault('test_mode', True)
        super().__init__(*args, ann_file=ann_file, **kwargs)

    def _join_prefix(self):
        # No annotation file: only the image prefix is joined with data_root.
        if self.data_root and self.data_prefix.get('img') and not osp.isabs(
                self.data_prefix['img']):
            self.data_prefix['img'] = osp.join(self.data_root,
                                               self.data_prefix['img'])

    def load_data_list(self) -> List[dict]:
        from PIL import Image, UnidentifiedImageError
        img_dir = self.data_prefix.get('img', '')
        if not osp.isdir(img_dir):
            raise FileNotFoundError(f'image folder not found: {img_dir}')
        names, skipped = list_images(img_dir)
        if not names:
            raise FileNotFoundError(
                f'no images ({formats_read()}) in {img_dir}' + (
                    f', only {len(skipped)} other files' if skipped else ''))
        if skipped and (img_dir, tuple(skipped)) not in _REPORTED_SKIPS:
            _REPORTED_SKIPS.add((img_dir, tuple(skipped)))
            import logging

            from mmengine.logging import print_log
            print_log(skipped_message(img_dir, skipped), logger='current',
                      level=logging.WARNING)
        data_list = []
        for name in names:
            path = osp.join(img_dir, name)
            try:
                with Image.open(path) as im:
                    width, height = im.size
            except (UnidentifiedImageError, OSError) as e:
                raise ValueError(f'cannot read image {path}: {e}') from None
            data_list.append(
                dict(img_path=path, img_id=osp.splitext(name)[0],
                     height=height, width=width, instances=[]))
        return data_list

    def filter_data(self) -> List[dict]:
        return self.data_list
