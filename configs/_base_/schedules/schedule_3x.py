"""3x schedule: 36 epochs, lr x0.1 at epochs 24 and 33 (batch 16, lr 0.02)."""
_base_ = 'mmdet::_base_/schedules/schedule_1x.py'

train_cfg = dict(max_epochs=36)
param_scheduler = [
    dict(
        type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=500),
    dict(
        type='MultiStepLR',
        begin=0,
        end=36,
        by_epoch=True,
        milestones=[24, 33],
        gamma=0.1)
]
