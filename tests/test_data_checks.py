"""The data checks that run before the first iteration: the image files
(when a BDD100K dataset is built, and in test.py's pre-flight: missing,
foreign and cut-short files), the annotation json's classes, and the
validation's GT bitmasks."""
import io
import json
import os
import os.path as osp
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from bdd100k_ins_seg.plugin.datasets import BDD100KInsSegDataset
from bdd100k_ins_seg.formats.images import (
    DataFileError,
    ImageFileError,
    check_image_file,
    check_image_files)

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))


def _image_bytes(fmt, size=(96, 64), seed=0):
    """A noisy picture (so that its compressed data are many KiB)."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, fmt)
    return buf.getvalue()


@pytest.mark.parametrize('fmt,ext,marker', [
    ('JPEG', 'jpg', 'no JPEG end-of-image marker'),
    ('PNG', 'png', 'no PNG IEND chunk')])
def test_a_file_cut_short_is_named(tmp_path, fmt, ext, marker):
    whole = _image_bytes(fmt, size=(320, 192))
    path = tmp_path / f'a.{ext}'
    path.write_bytes(whole)
    assert check_image_file(str(path)) == (320, 192)
    # Cut anywhere after the header: the end marker is gone.
    for keep in (0.2, 0.5, 0.9, 0.999):
        cut = tmp_path / f'cut.{ext}'
        cut.write_bytes(whole[:int(len(whole) * keep)])
        with pytest.raises(ImageFileError) as info:
            check_image_file(str(cut))
        assert info.value.path == str(cut)
        assert info.value.why.startswith(f'cut short: {marker}')
        assert str(info.value).startswith(f'image {cut}: cut short')


def test_data_after_the_end_marker_is_decoded_to_decide(tmp_path):
    """Some cameras append data after a JPEG's end (a motion photo's
    video): the marker is then not in the file's last 4 KiB, the pixels
    decode, and the file is accepted."""
    whole = _image_bytes('JPEG')
    path = tmp_path / 'motion.jpg'
    path.write_bytes(whole + b'\x00video' * 2000)
    assert check_image_file(str(path)) == (96, 64)
    # A PNG with a trailer whose pixel data were cut: the decode fails.
    png = _image_bytes('PNG', size=(320, 192))
    cut = tmp_path / 'cut_trailer.png'
    cut.write_bytes(png[:len(png) // 2] + b'\x00' * 8000)
    with pytest.raises(ImageFileError, match='cut short: no PNG IEND'):
        check_image_file(str(cut))


def test_missing_foreign_and_other_formats(tmp_path):
    with pytest.raises(FileNotFoundError,
                       match=f'image {tmp_path / "nope.jpg"}: not found'):
        check_image_file(str(tmp_path / 'nope.jpg'))
    text = tmp_path / 'notes.jpg'
    text.write_text('not an image\n' * 20)
    with pytest.raises(ImageFileError, match='notes.jpg: not an image file'):
        check_image_file(str(text))
    # A format without an end marker: its header is enough.
    bmp = tmp_path / 'a.bmp'
    bmp.write_bytes(_image_bytes('BMP'))
    assert check_image_file(str(bmp)) == (96, 64)
    # Many files: in order, the first bad one raises.
    good = tmp_path / 'good.png'
    good.write_bytes(_image_bytes('PNG'))
    assert check_image_files([str(good), str(bmp)]) == [(96, 64)] * 2
    with pytest.raises(ImageFileError, match='notes.jpg'):
        check_image_files([str(good), str(text), str(tmp_path / 'x.jpg')])


def _coco_dataset(tmp_path, names, category_ids=None, classes=None):
    """A COCO json listing ``names`` (one box each, of ``category_ids``) in
    tmp_path/images."""
    (tmp_path / 'images').mkdir(exist_ok=True)
    images, annotations = [], []
    category_ids = category_ids or [3] * len(names)
    for i, (name, cat) in enumerate(zip(names, category_ids), 1):
        images.append(dict(id=i, file_name=name, width=96, height=64))
        annotations.append(dict(
            id=i, image_id=i, category_id=cat, bbox=[10, 10, 40, 30],
            area=1200, iscrowd=0,
            segmentation=[[10, 10, 50, 10, 50, 40, 10, 40]]))
    coco = dict(images=images, annotations=annotations,
                categories=[dict(id=k, name=n) for k, n in enumerate(
                    classes or BDD100KInsSegDataset.METAINFO['classes'], 1)])
    ann = tmp_path / 'coco.json'
    ann.write_text(json.dumps(coco))
    return dict(ann_file=str(ann),
                data_prefix=dict(img=str(tmp_path / 'images') + '/'),
                pipeline=[])


def test_the_dataset_checks_its_images_when_built(tmp_path):
    images = tmp_path / 'images'
    kwargs = _coco_dataset(tmp_path, ['a.jpg', 'b.jpg', 'c.jpg'])
    whole = _image_bytes('JPEG')
    for name in ('a.jpg', 'b.jpg', 'c.jpg'):
        (images / name).write_bytes(whole)
    assert len(BDD100KInsSegDataset(**kwargs)) == 3
    (images / 'b.jpg').write_bytes(whole[:len(whole) // 2])
    with pytest.raises(ImageFileError) as info:
        BDD100KInsSegDataset(**kwargs)
    assert info.value.path == str(images / 'b.jpg')
    # Lazily built: checked by full_init, when the runner first needs it.
    lazy = BDD100KInsSegDataset(lazy_init=True, **kwargs)
    with pytest.raises(ImageFileError, match='b.jpg'):
        lazy.full_init()
    # Only the images the dataset serves: b.jpg left out by indices.
    assert len(BDD100KInsSegDataset(indices=[0, 2], **kwargs)) == 2
    # Switched off, or files behind a storage backend: not checked.
    assert len(BDD100KInsSegDataset(check_images=False, **kwargs)) == 3
    (images / 'c.jpg').unlink()
    with pytest.raises(FileNotFoundError, match='c.jpg: not found'):
        BDD100KInsSegDataset(indices=[0, 2], **kwargs)
    assert len(BDD100KInsSegDataset(
        backend_args=dict(backend='local'), **kwargs)) == 3
    # An image of another size than the json lists (labels of another
    # image, a bitmask of the wrong size made into the json).
    (images / 'c.jpg').write_bytes(_image_bytes('JPEG', size=(100, 64)))
    with pytest.raises(DataFileError) as info:
        BDD100KInsSegDataset(indices=[0, 2], **kwargs)
    assert str(info.value) == (
        f'{kwargs["ann_file"]}: lists {images / "c.jpg"} at 96x64, but the '
        'image is 100x64 (labels of another image, or a bitmask of the '
        'wrong size?)')
    # Stored 64x96 and turned by its EXIF orientation (as OpenCV loads it):
    # 96x64, as listed. Without the orientation the sizes differ.
    turned = Image.fromarray(np.zeros((96, 64, 3), np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6
    turned.save(images / 'c.jpg', exif=exif.tobytes())
    import cv2
    assert cv2.imread(str(images / 'c.jpg')).shape[:2] == (64, 96)
    assert len(BDD100KInsSegDataset(indices=[0, 2], **kwargs)) == 2
    turned.save(images / 'c.jpg')
    with pytest.raises(DataFileError, match='but the image is 64x96'):
        BDD100KInsSegDataset(indices=[0, 2], **kwargs)


def test_a_json_of_other_classes_is_refused(tmp_path):
    """mmdet would drop the annotations of an unknown category silently (a
    BDD100K detection json's traffic lights and signs, say)."""
    whole = _image_bytes('JPEG')
    names = ['a.jpg', 'b.jpg', 'c.jpg']
    kwargs = _coco_dataset(tmp_path, names, [3, 9, 9])
    for name in names:
        (tmp_path / 'images' / name).write_bytes(whole)
    with pytest.raises(DataFileError) as info:
        BDD100KInsSegDataset(**kwargs)
    assert info.value.path == kwargs['ann_file']
    assert 'not one of the 8 classes, by id: 9 (2 annotations)' in \
        str(info.value)
    assert len(BDD100KInsSegDataset(**_coco_dataset(
        tmp_path, names, [1, 8, 3]))) == 3
    # Categories named otherwise: none of the annotations would be read.
    classes = ['person'] + list(BDD100KInsSegDataset.METAINFO['classes'][1:])
    with pytest.raises(DataFileError,
                       match='its categories name 7 of the 8 BDD100K'):
        BDD100KInsSegDataset(**_coco_dataset(tmp_path, names, [1, 2, 3],
                                             classes))


def _train_cli(tmp_path, data_root):
    """train.py on the sample config and the data in data_root (2 iters)."""
    work_dir = tmp_path / 'wd'
    proc = subprocess.run(
        [sys.executable, osp.join(ROOT, 'train.py'),
         osp.join(ROOT, 'configs', 'sample', 'mask_rcnn_r18_fpn_sample.py'),
         '--work-dir', str(work_dir), '--cfg-options',
         f'data_root={data_root}',
         f'train_dataloader.dataset.data_root={data_root}',
         f'val_dataloader.dataset.data_root={data_root}',
         f'test_dataloader.dataset.data_root={data_root}',
         f'val_evaluator.gt_dir={data_root}labels/ins_seg/bitmasks/val',
         f'test_evaluator.gt_dir={data_root}labels/ins_seg/bitmasks/val',
         'train_dataloader.num_workers=0',
         'train_dataloader.persistent_workers=False',
         'train_cfg.max_iters=2', 'train_cfg.val_interval=2'],
        cwd=ROOT, capture_output=True, text=True,
        env=dict(os.environ, OMP_NUM_THREADS='1'))
    assert 'Traceback' not in proc.stderr, proc.stderr[-3000:]
    return proc, work_dir


def _one_line_before_training(proc, work_dir, text):
    assert proc.returncode == 1, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f'train.py: error: {text}') and last.endswith(
        '(checked before the first iteration)'), last
    assert 'Iter(train)' not in proc.stdout + proc.stderr
    assert not list(work_dir.rglob('*.pth'))


def test_train_checks_its_data_before_the_first_iteration(tmp_path):
    """train.py on the sample config: a training image cut short, then a
    validation image without its GT bitmask (which would fail at the first
    validation, hours in): one line naming it, exit 1, no iteration, no
    checkpoint. With both fixed it trains and validates."""
    from bdd100k_ins_seg.formats.sample_data import generate_sample_dataset
    data_root = str(tmp_path / 'sample') + '/'
    generate_sample_dataset(data_root, seed=3, counts=dict(train=3, val=2),
                            size=(160, 96), nproc=1, progress=False)
    train_dir = osp.join(data_root, 'images', '10k', 'train')
    with open(osp.join(data_root, 'jsons',
                       'ins_seg_train_cocofmt.json')) as f:
        name = json.load(f)['images'][1]['file_name']
    victim = osp.join(train_dir, name)
    whole = open(victim, 'rb').read()
    with open(victim, 'wb') as f:
        f.write(whole[:len(whole) * 2 // 3])
    proc, work_dir = _train_cli(tmp_path, data_root)
    _one_line_before_training(
        proc, work_dir,
        f'image {victim}: cut short: no JPEG end-of-image marker')
    with open(victim, 'wb') as f:
        f.write(whole)
    gt_dir = osp.join(data_root, 'labels', 'ins_seg', 'bitmasks', 'val')
    gt = sorted(os.listdir(gt_dir))[0]
    os.rename(osp.join(gt_dir, gt), tmp_path / gt)
    proc, work_dir = _train_cli(tmp_path, data_root)
    _one_line_before_training(
        proc, work_dir, f'GT bitmask folder {gt_dir}: no bitmask for 1 of '
        f'the 2 images, e.g. {gt}')
    os.rename(tmp_path / gt, osp.join(gt_dir, gt))
    proc, work_dir = _train_cli(tmp_path, data_root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (work_dir / 'iter_2.pth').is_file()
