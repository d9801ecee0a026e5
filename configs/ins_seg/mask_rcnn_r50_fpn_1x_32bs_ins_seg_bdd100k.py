"""Mask R-CNN R-50-FPN, 12 epochs, batch 8x4, single-scale."""
_base_ = './mask_rcnn_r50_fpn_1x_ins_seg_bdd100k.py'
train_dataloader = dict(batch_size=4)  # 8 GPUs x 4 images = 32
optim_wrapper = dict(optimizer=dict(lr=0.04))  # 0.02 x 32 / 16
# Lets `--auto-scale-lr` rescale lr 0.04 for a different total batch.
auto_scale_lr = dict(base_batch_size=32)
