"""Runtime shared by every config: mmdet's defaults + the BDD100K package."""
_base_ = 'mmdet::_base_/default_runtime.py'

# Registers the BDD100K dataset, metric and the torchvision-backed mmcv ops.
custom_imports = dict(
    imports=['bdd100k_ins_seg.plugin'], allow_failed_imports=False)

default_hooks = dict(
    # Keep the best checkpoint by the official mask AP besides the latest.
    checkpoint=dict(
        type='CheckpointHook', interval=1, max_keep_ckpts=3,
        save_best='bdd100k/segm_AP', rule='greater'))
