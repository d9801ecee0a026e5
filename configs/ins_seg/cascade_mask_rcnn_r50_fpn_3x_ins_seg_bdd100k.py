"""Cascade Mask R-CNN R-50-FPN, 36 epochs, batch 8x2, single-scale."""
_base_ = [
    'mmdet::_base_/models/cascade-mask-rcnn_r50_fpn.py',
    # Single-scale, as the published weights were trained (the original table
    # marks this model "MS-train", its config did not use it).
    '../_base_/datasets/bdd100k_ins_seg.py',
    '../_base_/default_runtime.py',
    '../_base_/schedules/schedule_3x.py',  # 36 epochs, lr 0.02 for 8x2
]
model = dict(
    roi_head=dict(
        # The 8 BDD100K classes in each of the three cascade stages.
        bbox_head=[
            dict(stage_head, num_classes=8)
            for stage_head in _base_.model.roi_head.bbox_head
        ],
        mask_head=dict(num_classes=8)))
