"""BDD100K instance segmentation (10K images, 8 classes), single-scale train.

Layout under ``data_root`` (see README "Data"):
  images/10k/{train,val,test}/*.jpg           1280x720 JPEGs
  labels/ins_seg/bitmasks/{train,val}/*.png   official bitmask labels
  jsons/ins_seg_{train,val}_cocofmt.json      made by tools/to_coco.py

Train reads the train images, val/test the val images with their labels. The
2K test images have no public labels: ``test.py CONFIG --img-dir
data/bdd100k/images/10k/test --format-only ...`` runs them as an image folder
through ``unlabeled_test_pipeline``.
"""
dataset_type = 'BDD100KInsSegDataset'
data_root = 'data/bdd100k/'
backend_args = None

train_pipeline = [
    dict(type='LoadImageFromFile', backend_args=backend_args),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    # BDD100K images are 1280x720: train and test at native resolution.
    dict(type='Resize', scale=(1280, 720), keep_ratio=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile', backend_args=backend_args),
    dict(type='Resize', scale=(1280, 720), keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(
        type='PackDetInputs',
        meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape',
                   'scale_factor')),
]
# Inference on an image folder with no labels (the 2K test split, or any
# folder passed to `test.py --img-dir`).
unlabeled_test_pipeline = [
    dict(type='LoadImageFromFile', backend_args=backend_args),
    dict(type='Resize', scale=(1280, 720), keep_ratio=True),
    dict(
        type='PackDetInputs',
        meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape',
                   'scale_factor')),
]

train_dataloader = dict(
    batch_size=2,  # 8 GPUs x 2 images = 16 (the zoo's default)
    num_workers=2,
    persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=True),
    batch_sampler=dict(type='AspectRatioBatchSampler'),
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        ann_file='jsons/ins_seg_train_cocofmt.json',
        data_prefix=dict(img='images/10k/train/'),
        filter_cfg=dict(filter_empty_gt=True, min_size=32),
        pipeline=train_pipeline,
        backend_args=backend_args))
val_dataloader = dict(
    batch_size=1,
    num_workers=2,
    persistent_workers=True,
    drop_last=False,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        ann_file='jsons/ins_seg_val_cocofmt.json',
        data_prefix=dict(img='images/10k/val/'),
        test_mode=True,
        pipeline=test_pipeline,
        backend_args=backend_args))
test_dataloader = val_dataloader

# The official BDD100K protocol: predictions rendered as non-overlapping
# bitmasks and scored by the `bdd100k` evaluator against the GT bitmasks.
val_evaluator = dict(
    type='BDD100KInsSegMetric',
    gt_dir=data_root + 'labels/ins_seg/bitmasks/val')
test_evaluator = val_evaluator
