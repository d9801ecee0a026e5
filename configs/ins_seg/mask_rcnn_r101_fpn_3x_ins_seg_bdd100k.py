"""Mask R-CNN R-101-FPN, 36 epochs, batch 8x2, multi-scale."""
_base_ = './mask_rcnn_r50_fpn_3x_ins_seg_bdd100k.py'
model = dict(
    backbone=dict(
        depth=101,  # ResNet-101, ImageNet weights from torchvision
        init_cfg=dict(type='Pretrained',
                      checkpoint='torchvision://resnet101')))
