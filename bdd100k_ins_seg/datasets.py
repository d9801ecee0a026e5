"""BDD100K instance segmentation datasets."""
import os
import os.path as osp
from typing import List

from mmdet.datasets import BaseDetDataset, CocoDataset
from mmdet.registry import DATASETS

#: The 8 classes, in the order of their category ids 1..8.
BDD100K_INS_SEG_CLASSES = ('pedestrian', 'rider', 'car', 'truck', 'bus',
                           'train', 'motorcycle', 'bicycle')
#: One display color (RGB) per class, in class order.
BDD100K_INS_SEG_PALETTE = [(220, 20, 60), (255, 0, 0), (0, 0, 142),
                           (0, 0, 70), (0, 60, 100), (0, 80, 100),
                           (0, 0, 230), (119, 11, 32)]

IMG_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp')


@DATASETS.register_module()
class BDD100KInsSegDataset(CocoDataset):
    """COCO-format json made by ``bdd100k.label.to_coco`` (category ids 1..8,
    RLE masks, ``iscrowd`` from the crowd bit)."""

    METAINFO = dict(
        classes=BDD100K_INS_SEG_CLASSES, palette=BDD100K_INS_SEG_PALETTE)


@DATASETS.register_module()
class BDD100KImageFolderDataset(BaseDetDataset):
    """Every image of a folder, with no annotations (e.g. the 2K test split).

    ``data_prefix=dict(img=...)`` is the folder; images are listed in sorted
    order and ``img_id`` is the file stem. Sizes are read from the file
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
        names = sorted(n for n in os.listdir(img_dir)
                       if n.lower().endswith(IMG_EXTENSIONS))
        if not names:
            raise FileNotFoundError(f'no images (*.jpg, *.png) in {img_dir}')
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
