"""Mask R-CNN R-101-FPN + DCN c3-c5, 36 epochs, batch 8x2, multi-scale."""
_base_ = './mask_rcnn_r101_fpn_3x_ins_seg_bdd100k.py'
model = dict(
    backbone=dict(
        # mmcv's DeformConv2dPack (not modulated) in every 3x3 conv of c3-c5.
        dcn=dict(type='DCN', deform_groups=1, fallback_on_stride=False),
        stage_with_dcn=(False, True, True, True)))
