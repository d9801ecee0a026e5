"""Fine-tune the demo's model on other data: the recipe of docs/finetune.md.

Starts from the model `make demo` trains (mask_rcnn_r18_fpn_sample.py,
650 iterations on the sample's sunny road scenes) and adapts it to a second
sample of another scene mix (dim city streets: more people, riders, buses):

    python tools/make_sample_data.py --out data/bdd100k_sample_city \
        --seed 1 --scene-mix city
    python train.py configs/sample/mask_rcnn_r18_fpn_sample_finetune.py

Only what differs from the from-scratch config is here. Your own data: set
``load_from`` and the dataloaders' ``data_root`` (the json in the BDD100K/
COCO form of tools/to_coco.py; the same 8 classes, or labels of a subset).
"""
_base_ = './mask_rcnn_r18_fpn_sample.py'

# The trained model, not a from-scratch start: weights only (the optimizer
# and the schedule start afresh; --resume would continue the old run).
load_from = 'work_dirs/mask_rcnn_r18_fpn_sample/iter_650.pth'
data_root = 'data/bdd100k_sample_city/'  # the new data
# 200 updates of 4 images (~2.7 epochs of its 300 images), a third of the
# from-scratch run; train_cfg.max_iters=N scales the schedule below.
max_iters = 200

model = dict(
    backbone=dict(
        # The stem and the first stage (edges, colours, textures: the same
        # on any street) keep their weights; fewer weights drift on a small
        # new dataset.
        frozen_stages=1,
        # BatchNorm keeps the statistics it learnt on 300 x 650 x 4 images
        # instead of re-estimating them from batches of 2-4.
        norm_eval=True))

train_dataloader = dict(dataset=dict(data_root=data_root))
val_dataloader = dict(dataset=dict(data_root=data_root))
test_dataloader = val_dataloader
val_evaluator = dict(gt_dir=data_root + 'labels/ins_seg/bitmasks/val')
test_evaluator = val_evaluator

train_cfg = dict(max_iters=max_iters, val_interval=max_iters)
# A tenth of the from-scratch lr (1.5e-3, for a batch of 4; --auto-scale-lr
# scales it to yours). AdamW's first steps move every weight by about the
# lr whatever its gradient: at 1.5e-3 a trained model loses much of what it
# knew before it learns the new data.
optim_wrapper = dict(optimizer=dict(lr=1.5e-4))
param_scheduler = [
    # a short warm-up from lr/10 while AdamW's moment estimates settle
    dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0,
         end=20),
    # one decay at 80%, as in the from-scratch schedule
    dict(type='MultiStepLR', by_epoch=False, begin=0, end=max_iters,
         milestones=[160], gamma=0.1),
]

default_hooks = dict(checkpoint=dict(interval=max_iters))
custom_hooks = [dict(type='ScaleScheduleHook', nominal_iters=max_iters)]
