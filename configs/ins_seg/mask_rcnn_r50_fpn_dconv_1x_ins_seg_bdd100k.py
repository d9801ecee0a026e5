"""Mask R-CNN R-50-FPN + DCN c3-c5, 12 epochs, batch 8x2, single-scale."""
_base_ = './mask_rcnn_r50_fpn_1x_ins_seg_bdd100k.py'
model = dict(
    backbone=dict(
        # mmcv's DeformConv2dPack (not modulated) in every 3x3 conv of c3-c5.
        dcn=dict(type='DCN', deform_groups=1, fallback_on_stride=False),
        stage_with_dcn=(False, True, True, True)))
