"""The fine-tuning recipe (configs/sample/mask_rcnn_r18_fpn_sample_finetune.py,
docs/finetune.md) on tiny data: a model trained from scratch by the sample
config for a few iterations stands in for the demo's; the fine-tune config
loads its checkpoint with the recipe's frozen stages, the loss goes down,
and the frozen weights and BatchNorm statistics stay as they were."""
import os.path as osp

import pytest
import torch

from test_train import _logged, _train

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
SAMPLE = osp.join(ROOT, 'configs', 'sample', 'mask_rcnn_r18_fpn_sample.py')
FINETUNE = osp.join(ROOT, 'configs', 'sample',
                    'mask_rcnn_r18_fpn_sample_finetune.py')
# Small runs, no validation (test.py scores models: docs/finetune.md).
QUICK = ['train_dataloader.batch_size=2', 'val_cfg=None',
         'val_dataloader=None', 'val_evaluator=None',
         'default_hooks.logger.interval=1', 'log_processor.window_size=1']
# The recipe's frozen part of the backbone (frozen_stages=1): stem, stage 1.
FROZEN = ('backbone.conv1.', 'backbone.bn1.', 'backbone.layer1.')


def _weights(checkpoint):
    return torch.load(checkpoint, map_location='cpu',
                      weights_only=False)['state_dict']


@pytest.fixture(scope='module')
def pretrained(tmp_path_factory):
    """(checkpoint of the sample config after 6 iterations on 4 road
    scenes, a folder of 4 city scenes)."""
    from bdd100k_ins_seg.formats.sample_data import generate_sample_dataset
    root = tmp_path_factory.mktemp('finetune')
    road, city = str(root / 'road') + '/', str(root / 'city') + '/'
    generate_sample_dataset(road, seed=0, counts=dict(train=4), nproc=1,
                            progress=False)
    generate_sample_dataset(city, seed=1, counts=dict(train=4), nproc=1,
                            progress=False, scene_mix='city')
    work_dir = root / 'scratch'
    _train(SAMPLE, work_dir, *QUICK, 'train_cfg.max_iters=6',
           f'train_dataloader.dataset.data_root={road}')
    return str(work_dir / 'iter_6.pth'), city


def test_finetune_config_is_the_recipe():
    from mmengine.config import Config

    from bdd100k_ins_seg.plugin.config_lookup import install_base_config_lookup
    install_base_config_lookup()
    cfg = Config.fromfile(FINETUNE)
    scratch = Config.fromfile(SAMPLE)
    assert cfg.load_from == 'work_dirs/mask_rcnn_r18_fpn_sample/iter_650.pth'
    assert cfg.model.backbone.frozen_stages == 1
    assert cfg.model.backbone.norm_eval is True
    assert cfg.optim_wrapper.optimizer.lr == pytest.approx(
        scratch.optim_wrapper.optimizer.lr / 10)
    assert cfg.auto_scale_lr.base_batch_size == \
        cfg.train_dataloader.batch_size
    for loader in (cfg.train_dataloader, cfg.val_dataloader):
        assert loader.dataset.data_root == 'data/bdd100k_sample_city/'
    assert cfg.val_evaluator.gt_dir.startswith('data/bdd100k_sample_city/')
    [hook] = cfg.custom_hooks
    assert hook.nominal_iters == cfg.train_cfg.max_iters
    # the same model otherwise: the demo's checkpoint fits it
    for key in ('neck', 'rpn_head', 'roi_head'):
        assert cfg.model[key] == scratch.model[key]


def test_finetune_learns_and_keeps_frozen_weights(pretrained, tmp_path):
    checkpoint, city = pretrained
    work_dir = tmp_path / 'finetune'
    _train(FINETUNE, work_dir, *QUICK, 'train_cfg.max_iters=10',
           f'load_from={checkpoint}',
           f'train_dataloader.dataset.data_root={city}')

    losses = [v for _, v in _logged(work_dir)]
    assert len(losses) == 10
    assert sum(losses[-3:]) < 0.9 * sum(losses[:3]), losses

    before, after = _weights(checkpoint), _weights(work_dir / 'iter_10.pth')
    assert sorted(before) == sorted(after)
    frozen = [k for k in before if k.startswith(FROZEN)]
    # BatchNorm statistics of every stage (norm_eval)
    statistics = [k for k in before if k.startswith('backbone.')
                  and k.endswith(('running_mean', 'running_var'))]
    assert len(frozen) > 20 and len(statistics) > 10
    for key in frozen + statistics:
        assert torch.equal(before[key], after[key]), key
    # The rest trains; the frozen weights were the checkpoint's (loaded).
    trained = [k for k in before if k not in frozen and k not in statistics
               and before[k].is_floating_point()]
    changed = [k for k in trained if not torch.equal(before[k], after[k])]
    assert len(changed) > 0.9 * len(trained)
