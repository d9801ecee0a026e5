"""Mask R-CNN HRNetV2p-W32-HRFPN, 36 epochs, batch 8x2, multi-scale."""
_base_ = [
    '../_base_/models/mask-rcnn_hrnetv2p-w32_hrfpn.py',
    '../_base_/datasets/bdd100k_ins_seg_ms.py',
    '../_base_/default_runtime.py',
    '../_base_/schedules/schedule_3x.py',  # 36 epochs, lr 0.02 for 8x2
]
model = dict(
    roi_head=dict(
        bbox_head=dict(num_classes=8),  # the 8 BDD100K classes
        mask_head=dict(num_classes=8)))
