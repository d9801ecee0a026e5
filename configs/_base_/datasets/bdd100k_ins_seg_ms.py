"""BDD100K instance segmentation with multi-scale training ("MS-train")."""
_base_ = './bdd100k_ins_seg.py'

train_pipeline = [
    dict(type='LoadImageFromFile', backend_args={{_base_.backend_args}}),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    # One of six heights from 600 to 720 (step 24) per image, width <= 1280.
    dict(
        type='RandomChoiceResize',
        scales=[(1280, 600), (1280, 624), (1280, 648), (1280, 672),
                (1280, 696), (1280, 720)],
        keep_ratio=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs'),
]
train_dataloader = dict(dataset=dict(pipeline=train_pipeline))
