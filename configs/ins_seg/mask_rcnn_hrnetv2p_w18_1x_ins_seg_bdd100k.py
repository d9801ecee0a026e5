"""Mask R-CNN HRNetV2p-W18-HRFPN, 12 epochs, batch 8x2, single-scale."""
_base_ = './mask_rcnn_hrnetv2p_w32_1x_ins_seg_bdd100k.py'
model = dict(
    backbone=dict(
        extra=dict(  # branch widths W, 2W, 4W, 8W
            stage2=dict(num_channels=(18, 36)),
            stage3=dict(num_channels=(18, 36, 72)),
            stage4=dict(num_channels=(18, 36, 72, 144))),
        init_cfg=dict(
            type='Pretrained', checkpoint='open-mmlab://msra/hrnetv2_w18')),
    neck=dict(in_channels=[18, 36, 72, 144]))
