"""Mask R-CNN R-50-FPN + GCNet c3-c5, 36 epochs, batch 8x2, multi-scale."""
_base_ = './mask_rcnn_r50_fpn_3x_ins_seg_bdd100k.py'
model = dict(
    backbone=dict(plugins=[
        dict(
            # Global context block, channel reduction 1/4 ("r4").
            cfg=dict(type='ContextBlock', ratio=1. / 4),
            stages=(False, True, True, True),  # c3-c5
            position='after_conv3')
    ]))
