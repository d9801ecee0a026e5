"""Mask R-CNN HRNetV2p-W40-HRFPN, 36 epochs, batch 8x2, multi-scale."""
_base_ = './mask_rcnn_hrnetv2p_w32_3x_ins_seg_bdd100k.py'
model = dict(
    backbone=dict(
        extra=dict(  # branch widths W, 2W, 4W, 8W
            stage2=dict(num_channels=(40, 80)),
            stage3=dict(num_channels=(40, 80, 160)),
            stage4=dict(num_channels=(40, 80, 160, 320))),
        init_cfg=dict(
            type='Pretrained', checkpoint='open-mmlab://msra/hrnetv2_w40')),
    neck=dict(in_channels=[40, 80, 160, 320]))
