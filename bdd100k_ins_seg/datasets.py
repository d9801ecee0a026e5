"""BDD100K instance segmentation datasets, and the image file check they
run before any training or inference starts."""
import os
import os.path as osp
import time
from typing import List, Sequence, Tuple

from mmdet.datasets import BaseDetDataset, CocoDataset
from mmdet.registry import DATASETS

from .cli import InputError

#: The 8 classes, in the order of their category ids 1..8.
BDD100K_INS_SEG_CLASSES = ('pedestrian', 'rider', 'car', 'truck', 'bus',
                           'train', 'motorcycle', 'bicycle')
#: One display color (RGB) per class, in class order.
BDD100K_INS_SEG_PALETTE = [(220, 20, 60), (255, 0, 0), (0, 0, 142),
                           (0, 0, 70), (0, 60, 100), (0, 80, 100),
                           (0, 0, 230), (119, 11, 32)]

IMG_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp')

#: Bytes read from a file's end to find its format's end marker.
_TAIL = 4096
#: The marker a complete file of the format ends with.
_END_MARKERS = {'JPEG': (b'\xff\xd9', 'JPEG end-of-image marker'),
                'PNG': (b'IEND', 'PNG IEND chunk')}


class DataFileError(InputError):
    """A data file that training or inference cannot use, found before the
    first iteration: ``path``, what the message calls it (``what``) and
    what is wrong (``why``)."""

    def __init__(self, path: str, why: str, what: str = '') -> None:
        super().__init__(what or path, why)
        self.path = path


class ImageFileError(DataFileError):
    """An image file that cannot be used (see :func:`check_image_file`)."""

    def __init__(self, path: str, why: str) -> None:
        super().__init__(path, why, f'image {path}')


class ImageNotFoundError(FileNotFoundError):
    """An image file that is not there (``path``)."""

    def __init__(self, path: str) -> None:
        super().__init__(f'image {path}: not found')
        self.path = path


def check_image_file(path: str) -> Tuple[int, int]:
    """The (width, height) of a complete image file, or
    :class:`ImageFileError` (:class:`ImageNotFoundError` where it is
    absent).

    Reads the header (the format and size) and the last 4 KiB: a JPEG or
    PNG must end with its end marker. A file cut short (an interrupted copy
    or download) has none; OpenCV would fill its missing rows with grey
    and go on, or fail hours into a run. Where the marker is not in the
    tail (data appended after it, as some cameras do) the pixels are
    decoded to decide.
    """
    from PIL import Image, UnidentifiedImageError
    try:
        with Image.open(path) as image:
            size, fmt = image.size, image.format
            marker = _END_MARKERS.get(fmt)
            if marker is None:
                return size
            fp = image.fp
            fp.seek(0, os.SEEK_END)
            fp.seek(max(0, fp.tell() - _TAIL))
            if marker[0] in fp.read(_TAIL):
                return size
            fp.seek(0)
            try:
                image.load()
            except (OSError, SyntaxError, ValueError) as e:
                raise ImageFileError(
                    path, f'cut short: no {marker[1]} ({e})') from None
            return size
    except FileNotFoundError:
        raise ImageNotFoundError(path) from None
    except UnidentifiedImageError:
        raise ImageFileError(path, 'not an image file') from None
    except ImageFileError:
        raise
    except (OSError, SyntaxError) as e:
        raise ImageFileError(
            path, f'cannot be read: {e or type(e).__name__}') from None


def _turned_by_exif(path: str) -> bool:
    """Whether the file's EXIF orientation turns it by 90 degrees (OpenCV,
    which loads the images, applies it: width and height swap)."""
    from PIL import Image
    with Image.open(path) as image:
        return image.getexif().get(0x0112) in (5, 6, 7, 8)


def check_image_files(paths: Sequence[str],
                      what: str = 'images') -> List[Tuple[int, int]]:
    """:func:`check_image_file` for every path, in order (the first bad file
    raises): their (width, height). ~0.08 ms a BDD100K image from the page
    cache; a progress bar appears if it takes more than 2 s (a cold network
    file system)."""
    from tqdm import tqdm
    return [check_image_file(path) for path in tqdm(
        paths, desc=f'checking {what}', unit='img', delay=2, mininterval=1.0,
        leave=False)]


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
                    and _turned_by_exif(info['img_path'])):
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
