"""Mask R-CNN R-50-FPN, 12 epochs, batch 8x2, single-scale."""
_base_ = [
    'mmdet::_base_/models/mask-rcnn_r50_fpn.py',
    '../_base_/datasets/bdd100k_ins_seg.py',
    '../_base_/default_runtime.py',
    'mmdet::_base_/schedules/schedule_1x.py',  # 12 epochs, lr 0.02 for 8x2
]
model = dict(
    roi_head=dict(
        bbox_head=dict(num_classes=8),  # the 8 BDD100K classes
        mask_head=dict(num_classes=8)))
