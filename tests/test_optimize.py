"""BatchNorm folding for inference: the zoo's model families predict the
same boxes, scores and mask logits after folding; a wrong fold, a fold of a
model in training mode, and a fold mmcv's ``fuse_conv_bn`` gets wrong are
caught."""
import copy

import pytest
import torch
from mmengine.config import Config
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

import bdd100k_ins_seg.plugin  # noqa: F401  (mmcv ops before mmdet.models)
from bdd100k_ins_seg.inference import fast_conv
from bdd100k_ins_seg.inference import optimize
from bdd100k_ins_seg.inference.optimize import (
    count_batchnorm,
    fold_batchnorm,
    optimize_for_inference)
from test_configs import CONFIG_DIR, SUFFIX, build_model

from mmdet.models.roi_heads.mask_heads import FCNMaskHead

TOL = dict(atol=1e-4, rtol=1e-4)


def randomise_batchnorm(model: nn.Module, generator: torch.Generator):
    """Running statistics and affine parameters far from the identity:
    a fold that forgets one of them (or eps) changes the outputs."""
    for m in model.modules():
        if isinstance(m, _BatchNorm):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=generator) * 0.5)
            m.running_var.copy_(torch.rand(n, generator=generator) * 1.5
                                + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=generator) + 0.5)
            m.bias.data.copy_(torch.randn(n, generator=generator) * 0.2)


def conv_bn(conv_bias=False, groups=1, var_scale=1.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    net = nn.Sequential(
        nn.Conv2d(8, 12, 3, padding=1, bias=conv_bias, groups=groups),
        nn.BatchNorm2d(12), nn.ReLU())
    with torch.no_grad():
        net[0].weight.copy_(torch.randn(net[0].weight.shape, generator=g))
        if conv_bias:
            net[0].bias.copy_(torch.randn(12, generator=g))
    randomise_batchnorm(net, g)
    net[1].running_var.mul_(var_scale)
    return net.eval(), torch.randn(2, 8, 9, 11, generator=g)


@pytest.mark.parametrize('conv_bias,groups,var_scale', [
    (False, 1, 1.0), (True, 1, 1.0), (False, 4, 1.0),
    (True, 1, 1e-5)])  # running_var ~ eps: an eps mistake is large here
def test_fold_equals_conv_then_bn(conv_bias, groups, var_scale):
    net, x = conv_bn(conv_bias, groups, var_scale)
    with torch.no_grad():
        expected = net(x)
        assert fold_batchnorm(net) == 1
        assert isinstance(net[1], nn.Identity) and count_batchnorm(net) == 0
        # float32 rounding grows with the outputs (~1e4 where running_var
        # ~ eps): folded and unfolded both stay within ~3e-7 of their
        # largest value from the float64 result, so they agree to 2e-6 of
        # it. A fold without eps exceeds that in all four cases (by 4-5x
        # at var_scale 1, by ~30% of the outputs at 1e-5).
        torch.testing.assert_close(
            net(x), expected, rtol=0,
            atol=2e-6 * float(expected.abs().max()))
        assert fold_batchnorm(net) == 0  # already folded: nothing to do


@pytest.mark.parametrize('mistake', ['no_eps', 'no_mean', 'no_beta'])
def test_a_wrong_fold_is_caught(monkeypatch, mistake):
    """The same comparison fails for a fold that is off by eps, or drops
    the mean or beta (the check above is not vacuous)."""
    real = optimize._fold

    def wrong(conv, bn):
        bn = copy.deepcopy(bn)
        if mistake == 'no_eps':
            bn.eps = 0.0
        elif mistake == 'no_mean':
            bn.running_mean.zero_()
        else:
            bn.bias.data.zero_()
        real(conv, bn)

    monkeypatch.setattr(optimize, '_fold', wrong)
    net, x = conv_bn(True, 1, 1e-5)
    with torch.no_grad():
        expected = net(x)
        fold_batchnorm(net)
        with pytest.raises(AssertionError):
            torch.testing.assert_close(net(x), expected, **TOL)


def test_training_mode_is_refused_and_left_alone():
    net, _ = conv_bn()
    net.train()
    state = copy.deepcopy(net.state_dict())
    for fold in (fold_batchnorm, optimize_for_inference):
        with pytest.raises(ValueError, match='training mode'):
            fold(net)
    assert count_batchnorm(net) == 1
    assert all(torch.equal(v, state[k]) for k, v in net.state_dict().items())
    # One module left in training mode (e.g. by a train() override) is
    # enough to refuse.
    net.eval()
    net[1].train()
    with pytest.raises(ValueError, match=r'training mode \(1\)'):
        fold_batchnorm(net)


def test_pre_norm_conv_module_is_not_folded():
    """ConvModule(order=('norm', 'conv', 'act')) registers its conv before
    its norm; mmcv's fuse_conv_bn folds that pair (wrongly). We leave it."""
    from mmcv.cnn import ConvModule, fuse_conv_bn
    g = torch.Generator().manual_seed(1)
    module = ConvModule(6, 6, 3, padding=1, norm_cfg=dict(type='BN'),
                        order=('norm', 'conv', 'act'))
    randomise_batchnorm(module, g)
    module.eval()
    x = torch.randn(1, 6, 7, 7, generator=g)
    with torch.no_grad():
        expected = module(x)
        mmcv_folded = fuse_conv_bn(copy.deepcopy(module))
        assert not torch.allclose(mmcv_folded(x), expected, **TOL)
        assert fold_batchnorm(module) == 0
        torch.testing.assert_close(module(x), expected, rtol=0, atol=0)


def test_conv_module_efficient_conv_bn_path_still_works():
    from mmcv.cnn import ConvModule
    g = torch.Generator().manual_seed(2)
    module = ConvModule(6, 5, 3, padding=1, norm_cfg=dict(type='BN'),
                        efficient_conv_bn_eval=True)
    randomise_batchnorm(module, g)
    module.eval()
    x = torch.randn(1, 6, 7, 7, generator=g)
    with torch.no_grad():
        expected = module(x)
        assert fold_batchnorm(module) == 1
        torch.testing.assert_close(module(x), expected, **TOL)


FAMILIES = {
    # Shrunk where it is slow: fewer channels, the zoo's module types.
    'mask_rcnn_r50': ('mask_rcnn_r50_fpn_1x', {}),
    'cascade_r50': ('cascade_mask_rcnn_r50_fpn_1x', {}),
    'hrnet_w18': ('mask_rcnn_hrnetv2p_w18_1x', {}),
    'dcn_r50': ('mask_rcnn_r50_fpn_dconv_1x', dict(base_channels=16)),
}


def keep_results(mask_preds, results_list, *args, **kwargs):
    return results_list


def zoo_model(name, overrides):
    cfg = Config.fromfile(str(CONFIG_DIR / f'{name}{SUFFIX}.py'))
    if overrides:  # a thinner ResNet: base_channels 16 instead of 64
        cfg.model.backbone.update(overrides)
        width = overrides['base_channels']
        cfg.model.neck.in_channels = [width * 4 * 2**i for i in range(4)]
    cfg.model.test_cfg.rpn.update(nms_pre=300, max_per_img=100)
    cfg.model.test_cfg.rcnn.update(score_thr=0.0, max_per_img=30)
    torch.manual_seed(0)
    model = build_model(cfg)
    model.init_weights()
    return model


@pytest.mark.parametrize('family', list(FAMILIES))
def test_zoo_family_predicts_the_same_after_folding(family, monkeypatch):
    """Random weights and BN statistics, a 320x192 image: the boxes,
    scores, labels and 28x28 mask logits of the folded model (with the
    Winograd 3x3 convolutions of the FPN, RPN and mask heads) equal the
    plain model's within 1e-4."""
    from mmdet.structures import DetDataSample
    name, overrides = FAMILIES[family]
    model = zoo_model(name, overrides)
    g = torch.Generator().manual_seed(0)
    image = torch.randint(0, 256, (3, 192, 320), dtype=torch.uint8,
                          generator=g)
    inputs = model.data_preprocessor(dict(inputs=[image]), False)['inputs']
    # Affine parameters far from the identity, then the BN statistics of
    # this image (random ones blow deep HRNet features up to infinities).
    for m in model.modules():
        if isinstance(m, _BatchNorm):
            m.weight.data.uniform_(0.5, 1.5, generator=g)
            m.bias.data.normal_(0, 0.1, generator=g)
            m.reset_running_stats()
            m.momentum = None
            m.train()
    with torch.no_grad():
        for m in model.modules():  # DCN offsets of a pixel or so, not tens
            if hasattr(m, 'conv_offset'):
                m.conv_offset.weight.mul_(0.1)
        model.extract_feat(inputs)
    model.eval()
    n_bn = count_batchnorm(model)

    logits = []
    for head in model.modules():
        if isinstance(head, FCNMaskHead):
            head.register_forward_hook(
                lambda mod, args, out: logits.append(out))
            # The logits are compared; pasting them is not inference.
            head.predict_by_feat = keep_results
    meta = dict(img_shape=(192, 320), ori_shape=(192, 320),
                scale_factor=(1.0, 1.0), pad_shape=(192, 320),
                batch_input_shape=(192, 320))

    def predict(net):
        logits.clear()
        with torch.inference_mode():
            result = net.predict(inputs, [DetDataSample(metainfo=meta)],
                                 rescale=False)[0].pred_instances
        assert logits, f"no mask head call ({len(result)} detections)"
        return result, torch.cat(logits)

    # In float64: the two models' rounding differences (float32: up to
    # ~1e-4 relative on these random networks, which amplify them) stay
    # far below the tolerance, a wrong fold does not.
    model.double()
    inputs = inputs.double()
    plain, plain_logits = predict(model)
    folded_model = copy.deepcopy(model)
    done = optimize_for_inference(folded_model)  # on CPU: channels_last too
    assert done['channels_last']
    assert folded_model.backbone.conv1.weight.is_contiguous(
        memory_format=torch.channels_last)
    left = count_batchnorm(folded_model)
    # Only the BatchNorms after a deformable conv (no bias to fold into).
    assert left == done['left'] == (13 if family.startswith('dcn') else 0)
    assert done['folded'] + left == n_bn
    winograd_calls = []
    winograd = fast_conv.winograd_conv3x3
    monkeypatch.setattr(fast_conv, 'winograd_conv3x3', lambda *a, **k: (
        winograd_calls.append(1), winograd(*a, **k))[1])
    ours, our_logits = predict(folded_model)
    assert done['winograd'] > 0 and len(winograd_calls) >= 6
    assert len(plain) == 30 and plain_logits.shape[-2:] == (28, 28)
    torch.testing.assert_close(ours.bboxes, plain.bboxes, **TOL)
    torch.testing.assert_close(ours.scores, plain.scores, **TOL)
    assert torch.equal(ours.labels, plain.labels)
    torch.testing.assert_close(our_logits, plain_logits, **TOL)


@pytest.mark.parametrize('op', ['RoIAlign', 'DeformConv2dPack',
                                'ModulatedDeformConv2dPack'])
def test_ops_give_the_same_results_on_channels_last_inputs(op):
    """The compiled-op stand-in (torchvision kernels) reads channels_last
    features and weights as it reads NCHW ones."""
    import mmcv.ops
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 8, 23, 31, generator=g)
    if op == 'RoIAlign':
        module = mmcv.ops.RoIAlign(7, spatial_scale=0.25, sampling_ratio=0,
                                   aligned=True)
        xy = torch.rand(20, 2, generator=g) * 100
        wh = torch.rand(20, 2, generator=g) * 60 + 1
        rois = torch.cat([torch.randint(0, 2, (20, 1), generator=g).float(),
                          xy, xy + wh], 1)

        def call(m, inp):
            return m(inp, rois)
    else:
        module = getattr(mmcv.ops, op)(8, 6, 3, padding=1)
        with torch.no_grad():
            module.weight.normal_(generator=g)
            # offsets (and masks) of a few pixels, not zero
            module.conv_offset.weight.normal_(0, 0.3, generator=g)

        def call(m, inp):
            return m(inp)
    with torch.no_grad():
        expected = call(module, x)
        cl_module = copy.deepcopy(module).to(memory_format=torch.channels_last)
        got = call(cl_module, x.contiguous(memory_format=torch.channels_last))
    assert expected.abs().sum() > 0
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_resnext_backbone_is_folded():
    """ResNeXt's Bottleneck (grouped 3x3 conv, mmdet's Bottleneck forward):
    every BatchNorm folded, same features."""
    from mmdet.models.backbones import ResNeXt
    torch.manual_seed(0)
    net = ResNeXt(depth=50, groups=4, base_width=4, base_channels=16,
                  num_stages=2, out_indices=(0, 1), strides=(1, 2),
                  dilations=(1, 1))
    randomise_batchnorm(net, torch.Generator().manual_seed(4))
    net.eval()  # mmdet ResNet.train() returns None
    net.double()
    x = torch.randn(1, 3, 64, 96, dtype=torch.float64)
    with torch.no_grad():
        expected = net(x)
        n_bn = count_batchnorm(net)
        assert fold_batchnorm(net) == n_bn > 0
        assert count_batchnorm(net) == 0
        for got, want in zip(net(x), expected):
            torch.testing.assert_close(got, want, **TOL)
