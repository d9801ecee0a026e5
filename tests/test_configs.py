"""The 26 zoo configs: recipe, dataset splits, model build, checkpoint layout.

Every config is parsed and its full model built on CPU (no pretrained
weights: ``init_cfg=None``). One config per architecture family also
round-trips a state_dict saved in the mmdet 2.x checkpoint layout and runs one
prediction on a small image.
"""
import json
import os.path as osp
from pathlib import Path

import numpy as np
import pytest
import torch

import bdd100k_ins_seg.plugin  # noqa: F401  (mmcv ops before mmdet.models)
from bdd100k_ins_seg import zoo
from bdd100k_ins_seg.plugin.checkpoint import safe_load
from mmengine.config import Config
from mmengine.registry import init_default_scope

REPO = Path(__file__).resolve().parent.parent
CONFIG_DIR = REPO / 'configs' / 'ins_seg'

# The original zoo's 26 model names (FACTS.md section 1), suffix dropped.
PUBLISHED_NAMES = [
    'mask_rcnn_r50_fpn_1x', 'mask_rcnn_r50_fpn_3x', 'mask_rcnn_r101_fpn_3x',
    'mask_rcnn_r50_fpn_1x_32bs', 'mask_rcnn_r50_fpn_3x_32bs',
    'mask_rcnn_r101_fpn_3x_32bs',
    'cascade_mask_rcnn_r50_fpn_1x', 'cascade_mask_rcnn_r50_fpn_3x',
    'cascade_mask_rcnn_r101_fpn_3x', 'cascade_mask_rcnn_r50_fpn_1x_32bs',
    'cascade_mask_rcnn_r50_fpn_3x_32bs',
    'mask_rcnn_r50_fpn_dconv_1x', 'mask_rcnn_r50_fpn_dconv_3x',
    'mask_rcnn_r101_fpn_dconv_3x', 'mask_rcnn_r50_fpn_dconv_1x_32bs',
    'mask_rcnn_r50_fpn_dconv_3x_32bs', 'mask_rcnn_r101_fpn_dconv_3x_32bs',
    'gcnet_mask_rcnn_r50_fpn_1x', 'gcnet_mask_rcnn_r50_fpn_3x',
    'gcnet_mask_rcnn_r101_fpn_3x',
    'mask_rcnn_hrnetv2p_w18_1x', 'mask_rcnn_hrnetv2p_w18_3x',
    'mask_rcnn_hrnetv2p_w32_1x', 'mask_rcnn_hrnetv2p_w32_3x',
    'mask_rcnn_hrnetv2p_w40_1x', 'mask_rcnn_hrnetv2p_w40_3x',
]
SUFFIX = '_ins_seg_bdd100k'

# Parameter counts measured for mmdet 2.28 / 3.3 models of the original
# settings (FACTS.md section 4): facts of the architecture.
FAMILY_PARAMS = {
    'mask_r50': 44_008_832, 'mask_r101': 63_000_960,
    'cascade_r50': 77_047_694, 'cascade_r101': 96_039_822,
    'dcn_r50': 44_589_674, 'dcn_r101': 64_287_132,
    'gcnet_r50': 54_009_741, 'gcnet_r101': 81_962_654,
    'hrnet_w18': 29_738_452, 'hrnet_w32': 49_535_488,
    'hrnet_w40': 65_781_888,
}
# One config per family for the checkpoint round trip and prediction.
FAMILY_REPRESENTATIVE = {
    'mask_r50': 'mask_rcnn_r50_fpn_1x',
    'mask_r101': 'mask_rcnn_r101_fpn_3x',
    'cascade_r50': 'cascade_mask_rcnn_r50_fpn_1x',
    'cascade_r101': 'cascade_mask_rcnn_r101_fpn_3x',
    'dcn_r50': 'mask_rcnn_r50_fpn_dconv_1x',
    'dcn_r101': 'mask_rcnn_r101_fpn_dconv_3x',
    'gcnet_r50': 'gcnet_mask_rcnn_r50_fpn_1x',
    'gcnet_r101': 'gcnet_mask_rcnn_r101_fpn_3x',
    'hrnet_w18': 'mask_rcnn_hrnetv2p_w18_1x',
    'hrnet_w32': 'mask_rcnn_hrnetv2p_w32_1x',
    'hrnet_w40': 'mask_rcnn_hrnetv2p_w40_1x',
}
# Keys (and shapes) of the mmdet 2.x checkpoints each family must accept.
FAMILY_KEYS = {
    'mask': {'roi_head.bbox_head.fc_cls.weight': (9, 1024),
             'roi_head.bbox_head.fc_reg.weight': (32, 1024),
             'roi_head.mask_head.conv_logits.weight': (8, 256, 1, 1)},
    'cascade': {f'roi_head.{head}.{stage}.{key}': shape
                for stage in range(3)
                for head, key, shape in (
                    ('bbox_head', 'fc_cls.weight', (9, 1024)),
                    ('bbox_head', 'fc_reg.weight', (4, 1024)),
                    ('mask_head', 'conv_logits.weight', (8, 256, 1, 1)))},
    'dcn': {'backbone.layer2.0.conv2.conv_offset.weight': (18, 128, 3, 3)},
    'gcnet': {'backbone.layer2.0.context_block.channel_add_conv.0.weight':
              (128, 512, 1, 1)},
    'hrnet': {'neck.reduction_conv.conv.weight': (256, None, 1, 1)},
}

ALL_CONFIGS = sorted(CONFIG_DIR.glob(f'*{SUFFIX}.py'))


def family_of(name):
    """'mask_r50', 'cascade_r101', 'hrnet_w32', ... for a model name."""
    if 'hrnet' in name:
        return 'hrnet_' + name.split('hrnetv2p_')[1][:3]
    depth = 'r101' if '_r101_' in name else 'r50'
    if name.startswith('cascade'):
        return 'cascade_' + depth
    if name.startswith('gcnet'):
        return 'gcnet_' + depth
    if 'dconv' in name:
        return 'dcn_' + depth
    return 'mask_' + depth


def load_config(name):
    return Config.fromfile(str(CONFIG_DIR / f'{name}{SUFFIX}.py'))


def build_model(cfg):
    """The config's detector with no pretrained initialisation (no I/O)."""
    from mmdet.registry import MODELS
    init_default_scope('mmdet')
    cfg.model.backbone.init_cfg = None
    return MODELS.build(cfg.model)


def n_params(model):
    return sum(p.numel() for p in model.parameters())


def heads(cfg, key):
    head = cfg.model.roi_head[key]
    return head if isinstance(head, list) else [head]


def test_the_26_published_names_have_configs_and_catalogue_entries():
    stems = sorted(p.name[:-len(SUFFIX + '.py')] for p in ALL_CONFIGS)
    assert stems == sorted(PUBLISHED_NAMES)
    catalogue = zoo.load_catalogue()
    assert sorted(catalogue) == sorted(n + SUFFIX for n in PUBLISHED_NAMES)
    for entry in catalogue.values():
        assert osp.isfile(entry.config_path), entry.config


@pytest.mark.parametrize('name', PUBLISHED_NAMES)
def test_config_recipe(name):
    cfg = load_config(name)
    entry = zoo.get_entry(name)

    # 8 BDD100K classes in every head; test-time settings of the original.
    assert [h.num_classes for h in heads(cfg, 'bbox_head')] == \
        [8] * (3 if name.startswith('cascade') else 1)
    assert all(h.num_classes == 8 for h in heads(cfg, 'mask_head'))
    rcnn_test = cfg.model.test_cfg.rcnn
    assert (rcnn_test.score_thr, rcnn_test.max_per_img,
            rcnn_test.mask_thr_binary) == (0.05, 100, 0.5)

    # Schedule, batch and lr as the catalogue states them.
    assert cfg.train_cfg.max_epochs == entry.epochs
    steps = {12: [8, 11], 36: [24, 33]}[entry.epochs]
    warmup, multistep = cfg.param_scheduler
    assert (warmup.type, warmup.start_factor, warmup.end) == \
        ('LinearLR', 0.001, 500)
    assert (multistep.type, multistep.milestones) == ('MultiStepLR', steps)
    assert cfg.train_dataloader.batch_size * 8 == entry.batch_size
    assert cfg.optim_wrapper.optimizer.lr == pytest.approx(
        0.02 * entry.batch_size / 16)
    assert (cfg.optim_wrapper.optimizer.momentum,
            cfg.optim_wrapper.optimizer.weight_decay) == (0.9, 1e-4)
    assert cfg.auto_scale_lr == dict(enable=False,
                                     base_batch_size=entry.batch_size)

    # Multi-scale training exactly where the published weights used it.
    resize = cfg.train_dataloader.dataset.pipeline[2]
    if entry.ms_train:
        assert resize.type == 'RandomChoiceResize'
        assert resize.scales == [(1280, h) for h in range(600, 721, 24)]
    else:
        assert (resize.type, resize.scale) == ('Resize', (1280, 720))
    assert entry.ms_train == (entry.lr_schedule == '3x'
                              and not name.startswith('cascade'))

    # Train on train images, validate on val (the original trained on val).
    train_set = cfg.train_dataloader.dataset
    assert (train_set.ann_file, train_set.data_prefix.img) == \
        ('jsons/ins_seg_train_cocofmt.json', 'images/10k/train/')
    val_set = cfg.val_dataloader.dataset
    assert (val_set.ann_file, val_set.data_prefix.img) == \
        ('jsons/ins_seg_val_cocofmt.json', 'images/10k/val/')
    assert cfg.val_evaluator.type == 'BDD100KInsSegMetric'
    assert cfg.val_evaluator.gt_dir.endswith('labels/ins_seg/bitmasks/val')
    assert cfg.default_hooks.checkpoint.save_best == 'bdd100k/segm_AP'
    assert 'bdd100k_ins_seg.plugin' in cfg.custom_imports.imports
    assert cfg.load_from is None  # released weights live in the catalogue

    # Backbone recipe per family.
    family = family_of(name)
    backbone = cfg.model.backbone
    if family.startswith('hrnet'):
        width = int(family[-2:])
        assert backbone.type == 'HRNet'
        assert backbone.extra.stage4.num_channels == \
            (width, 2 * width, 4 * width, 8 * width)
        assert list(cfg.model.neck.in_channels) == \
            [width, 2 * width, 4 * width, 8 * width]
        assert backbone.init_cfg.checkpoint == \
            f'open-mmlab://msra/hrnetv2_w{width}'
    else:
        depth = 101 if family.endswith('r101') else 50
        assert backbone.depth == depth
        assert backbone.init_cfg.checkpoint == f'torchvision://resnet{depth}'
        if family.startswith('dcn'):
            assert backbone.dcn == dict(type='DCN', deform_groups=1,
                                        fallback_on_stride=False)
            assert backbone.stage_with_dcn == (False, True, True, True)
        else:
            assert backbone.get('dcn') is None
        if family.startswith('gcnet'):
            [plugin] = backbone.plugins
            assert plugin.cfg == dict(type='ContextBlock', ratio=1. / 4)
            assert (plugin.stages, plugin.position) == \
                ((False, True, True, True), 'after_conv3')
        else:
            assert backbone.get('plugins') is None


# The family representatives are built (and sized) by the checkpoint test.
@pytest.mark.parametrize('name', [
    n for n in PUBLISHED_NAMES if n not in FAMILY_REPRESENTATIVE.values()])
def test_config_builds_the_model_of_its_family(name):
    model = build_model(load_config(name))
    assert n_params(model) == FAMILY_PARAMS[family_of(name)] == \
        zoo.get_entry(name).parameters


def _predict(model, height=64, width=96):
    from mmdet.structures import DetDataSample
    generator = torch.Generator().manual_seed(0)
    image = torch.randint(0, 256, (3, height, width), dtype=torch.uint8,
                          generator=generator)
    sample = DetDataSample(metainfo=dict(
        img_id=0, img_shape=(height, width), ori_shape=(height, width),
        scale_factor=(1.0, 1.0)))
    model.eval()
    with torch.no_grad():
        [result] = model.test_step(dict(inputs=[image], data_samples=[sample]))
    return result.pred_instances


@pytest.mark.parametrize('family', list(FAMILY_REPRESENTATIVE))
def test_family_loads_mmdet2_checkpoint_and_predicts(family, tmp_path):
    name = FAMILY_REPRESENTATIVE[family]
    torch.manual_seed(0)
    trained = build_model(load_config(name))
    # Uniform class scores (1/9 > score_thr 0.05), so the prediction below
    # has instances and masks whatever the random weights.
    for module in trained.modules():
        if hasattr(module, 'fc_cls'):
            torch.nn.init.zeros_(module.fc_cls.weight)
            torch.nn.init.zeros_(module.fc_cls.bias)
    state_dict = trained.state_dict()
    for key, shape in FAMILY_KEYS[family.split('_')[0]].items():
        assert key in state_dict, key
        assert all(want in (None, got) for want, got in
                   zip(shape, state_dict[key].shape)), (key, shape)
    if family.startswith('mask_r') or family.startswith('hrnet'):
        for key, shape in FAMILY_KEYS['mask'].items():
            assert tuple(state_dict[key].shape) == shape

    # The layout of the published files: state_dict + plain-python meta.
    path = tmp_path / f'{name}{SUFFIX}.pth'
    meta = dict(mmdet_version='2.18.0', mmcv_version='1.3.17', epoch=12,
                iter=5256, CLASSES=('pedestrian', 'rider', 'car', 'truck',
                                    'bus', 'train', 'motorcycle', 'bicycle'),
                config='model = dict(...)', env_info='sys.platform: linux',
                time='Tue Nov  2 10:00:00 2021', hook_msgs={})
    torch.save({'state_dict': state_dict, 'meta': meta}, path)
    checkpoint = safe_load(str(path))  # weights_only: no code executed
    assert set(checkpoint) == {'state_dict', 'meta'}
    assert checkpoint['meta']['CLASSES'] == meta['CLASSES']

    cfg = load_config(name)
    # Fewer proposals and instances than the zoo's 1000 / 100: keeps the
    # CPU prediction short; the layers that run are the same.
    cfg.model.test_cfg.rpn.update(nms_pre=200, max_per_img=50)
    cfg.model.test_cfg.rcnn.max_per_img = 5
    fresh = build_model(cfg)
    assert n_params(fresh) == FAMILY_PARAMS[family] == \
        zoo.get_entry(name).parameters
    first = next(iter(state_dict))
    assert not torch.equal(fresh.state_dict()[first], state_dict[first])
    # strict: any missing or unexpected key raises.
    fresh.load_state_dict(checkpoint['state_dict'], strict=True)
    loaded = fresh.state_dict()
    assert loaded.keys() == state_dict.keys()
    assert all(torch.equal(loaded[k], state_dict[k]) for k in state_dict)

    pred = _predict(fresh)
    assert len(pred) == 5
    assert pred.masks.shape[1:] == (64, 96)
    assert pred.masks.dtype == torch.bool
    assert pred.bboxes.shape == (len(pred), 4)
    assert ((pred.labels >= 0) & (pred.labels < 8)).all()
    assert (pred.scores >= 0.05).all()


def _write_split(root, split, stems):
    """Tiny images + a COCO json with one instance each, for ``split``."""
    import cv2
    img_dir = root / 'images' / '10k' / split
    img_dir.mkdir(parents=True)
    images, annotations = [], []
    for i, stem in enumerate(stems, 1):
        cv2.imwrite(str(img_dir / f'{stem}.jpg'),
                    np.full((48, 80, 3), 40 * i, np.uint8))
        images.append(dict(id=i, file_name=f'{stem}.jpg', height=48,
                           width=80))
        annotations.append(dict(
            id=i, image_id=i, category_id=3, iscrowd=0, area=400,
            bbox=[10, 10, 20, 20],
            segmentation=[[10, 10, 30, 10, 30, 30, 10, 30]]))
    categories = [dict(id=i, name=n) for i, n in enumerate(
        bdd100k_ins_seg.plugin.datasets.BDD100K_INS_SEG_CLASSES, 1)]
    (root / 'jsons').mkdir(exist_ok=True)
    with open(root / 'jsons' / f'ins_seg_{split}_cocofmt.json', 'w') as f:
        json.dump(dict(images=images, annotations=annotations,
                       categories=categories), f)


@pytest.mark.parametrize('base', ['bdd100k_ins_seg', 'bdd100k_ins_seg_ms'])
def test_dataset_base_reads_train_images_for_train_and_val_for_val(
        base, tmp_path):
    from mmdet.registry import DATASETS
    init_default_scope('mmdet')
    root = tmp_path / 'bdd100k'
    _write_split(root, 'train', ['train_a', 'train_b'])
    _write_split(root, 'val', ['val_a'])
    cfg = Config.fromfile(str(REPO / 'configs' / '_base_' / 'datasets' /
                              f'{base}.py'))
    seen = {}
    for split, loader in (('train', cfg.train_dataloader),
                          ('val', cfg.val_dataloader),
                          ('test', cfg.test_dataloader)):
        dataset_cfg = loader.dataset.copy()
        dataset_cfg.data_root = str(root) + '/'
        dataset = DATASETS.build(dataset_cfg)
        assert dataset.metainfo['classes'] == \
            bdd100k_ins_seg.plugin.datasets.BDD100K_INS_SEG_CLASSES
        item = dataset[0]  # runs the pipeline: reads the image from disk
        paths = sorted(Path(dataset.get_data_info(i)['img_path']).name
                       for i in range(len(dataset)))
        seen[split] = paths
        assert Path(item['data_samples'].img_path).parent == \
            root / 'images' / '10k' / ('train' if split == 'train' else 'val')
        if split == 'train':
            assert item['data_samples'].gt_instances.labels.tolist() == [2]
    assert seen == {'train': ['train_a.jpg', 'train_b.jpg'],
                    'val': ['val_a.jpg'], 'test': ['val_a.jpg']}
