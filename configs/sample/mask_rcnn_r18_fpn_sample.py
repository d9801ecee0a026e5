"""Mask R-CNN with a half-width ResNet-18 + FPN-64, trained from scratch on
the embedded sample (320x192 driving scenes, tools/make_sample_data.py) in a
few minutes on 2 CPU cores. What `make demo` trains.

On 2 cores the number of updates matters more than model size, so the model
is narrow, the batch small and the RoI sampling light (64 RoIs per image,
not 512), with a 32-channel RPN head and fused AdamW. The mask head keeps
mmdet's 4 convolutions: with 2 (and 48 RoIs) a step was ~5-15% cheaper,
but the AP fell to the bar's edge and below it on another CPU. What each
choice cost in time and AP, and the schedules tried: docs/demo.md.

Another length: --cfg-options train_cfg.max_iters=N. ScaleScheduleHook
(bdd100k_ins_seg.engine.schedule) then scales the warm-up, the LR milestones and
the checkpoint / validation intervals below to N, so the run still decays
the LR at the same fractions and saves and validates at its end.
"""
_base_ = [
    'mmdet::_base_/models/mask-rcnn_r50_fpn.py',
    '../_base_/datasets/bdd100k_ins_seg.py',
    '../_base_/default_runtime.py',
]

data_root = 'data/bdd100k_sample/'
image_size = (320, 192)  # (width, height) of the sample images
# 650 updates of 4 images: 33.8 mask AP on the sample's val split (35.1
# with seed 1) in the demo's two CPU processes of 2 images each on an
# AVX-512 Xeon in float32; the demo's bar is 30, and 520 updates fell
# below it.
max_iters = 650

model = dict(
    backbone=dict(
        depth=18,
        base_channels=32,  # half width: stage outputs 32, 64, 128, 256
        # From scratch: every stage and every BN layer trains.
        frozen_stages=-1,
        norm_eval=False,
        init_cfg=None),
    neck=dict(in_channels=[32, 64, 128, 256], out_channels=64),
    rpn_head=dict(
        in_channels=64,
        feat_channels=32,
        # Objects are 5-150 px tall here: anchors of 16-256 px, not 32-512.
        anchor_generator=dict(scales=[4])),
    roi_head=dict(
        # sampling_ratio=0 (adaptive) as in mmdet's base: cheaper than a
        # fixed 2x2 grid on small RoIs.
        bbox_roi_extractor=dict(out_channels=64),
        bbox_head=dict(in_channels=64, fc_out_channels=256, num_classes=8),
        mask_roi_extractor=dict(out_channels=64),
        mask_head=dict(in_channels=64, conv_out_channels=64, num_classes=8)),
    train_cfg=dict(
        # ~15 objects per image: 200 proposals per level before NMS, 200
        # after it and 64 sampled RoIs per image (16 positive at most) are
        # plenty, and much cheaper than 2000 / 1000 / 512.
        rpn_proposal=dict(nms_pre=200, max_per_img=200),
        rcnn=dict(sampler=dict(num=64))),
    test_cfg=dict(rpn=dict(nms_pre=400, max_per_img=200)))

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='Resize', scale=image_size, keep_ratio=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=image_size, keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(
        type='PackDetInputs',
        meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape',
                   'scale_factor')),
]
unlabeled_test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=image_size, keep_ratio=True),
    dict(
        type='PackDetInputs',
        meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape',
                   'scale_factor')),
]

# Small images load in milliseconds: worker processes would only take CPU
# time away from the model on 2 cores.
train_dataloader = dict(
    batch_size=4,  # more updates per minute than 8; lr below is for 4
    num_workers=0,
    persistent_workers=False,
    sampler=dict(type='InfiniteSampler', shuffle=True),
    dataset=dict(data_root=data_root, pipeline=train_pipeline))
val_dataloader = dict(
    num_workers=0,
    persistent_workers=False,
    dataset=dict(data_root=data_root, pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(gt_dir=data_root + 'labels/ins_seg/bitmasks/val')
test_evaluator = val_evaluator

# Validate once, at the end.
train_cfg = dict(
    type='IterBasedTrainLoop', max_iters=max_iters,
    val_interval=max_iters)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')

# On CPU train.py keeps the weights, so the feature maps, in NHWC order:
# oneDNN's convolutions are faster on them, forward and backward.
memory_format = 'channels_last'

# AdamW trains a from-scratch model much faster than SGD in few updates.
# BF16OptimWrapper (bdd100k_ins_seg.plugin.optim): the forward and losses in
# bfloat16 autocast where the CPU computes bfloat16 natively (AVX512-BF16,
# AMX), float32 elsewhere. On an AVX-512 AMD EPYC the demo's training took
# 208-212 s instead of 249 s, 33.5 and 35.8 mask AP (seeds 0, 1) against
# float32's 34.8 (seed 0); docs/demo.md.
optim_wrapper = dict(
    type='BF16OptimWrapper',
    # fused: one kernel for all parameters instead of ~10 ops each
    optimizer=dict(type='AdamW', lr=1.5e-3, weight_decay=0.05, fused=True),
    clip_grad=dict(max_norm=10.0))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0,
         end=100),
    # One decay, at 80% of the schedule.
    dict(type='MultiStepLR', by_epoch=False, begin=0, end=max_iters,
         milestones=[520], gamma=0.1),
]
auto_scale_lr = dict(enable=False, base_batch_size=4)

default_hooks = dict(
    logger=dict(interval=20),
    checkpoint=dict(by_epoch=False, interval=max_iters, max_keep_ckpts=1))
log_processor = dict(by_epoch=False, window_size=20)
custom_imports = dict(
    imports=['bdd100k_ins_seg.plugin', 'bdd100k_ins_seg.engine.schedule'],
    allow_failed_imports=False)
# The numbers above are for max_iters; other lengths are scaled to them.
custom_hooks = [dict(type='ScaleScheduleHook', nominal_iters=max_iters)]
randomness = dict(seed=0)
