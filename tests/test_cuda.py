"""CUDA-only checks, run by ``make gpu-check`` (``pytest -m cuda``).

Deselected without ``-m cuda``; selected on a machine without CUDA they fail
at their set-up, saying so (tests/conftest.py). The device-parametrized op
tests' CUDA cases (tests/test_ops.py, tests/test_ops_mmcv_parity.py) run
with them. Every one runs with TF32 off (tests/devices.py): PyTorch's
default TF32 convolutions (compute capability 8.0+) would move the sample
model's features by up to 4e-3 (emulated), beyond the comparisons with the
CPU below.
"""
import numpy as np
import pytest
import torch

import bdd100k_ins_seg.plugin  # noqa: F401  (mmcv ops before mmdet)

pytestmark = pytest.mark.cuda
SAMPLE = 'configs/sample/mask_rcnn_r18_fpn_sample.py'


def test_ops_on_cuda_equal_cpu():
    from mmcv.ops import RoIAlign, nms
    gen = torch.Generator().manual_seed(0)
    feats = torch.rand(2, 8, 32, 40, generator=gen)
    xy = torch.rand(30, 2, generator=gen) * 30
    wh = torch.rand(30, 2, generator=gen) * 20 + 1
    rois = torch.cat([torch.randint(0, 2, (30, 1), generator=gen).float(),
                      xy, xy + wh], 1)
    layer = RoIAlign((7, 7), spatial_scale=1.0, sampling_ratio=0)
    cpu = layer(feats, rois)
    cuda = layer(feats.cuda(), rois.cuda()).cpu()
    assert torch.allclose(cpu, cuda, atol=1e-5)
    boxes = rois[:, 1:].contiguous()
    scores = torch.rand(30, generator=gen)
    _, keep_cpu = nms(boxes, scores, 0.5)
    _, keep_cuda = nms(boxes.cuda(), scores.cuda(), 0.5)
    assert torch.equal(keep_cpu, keep_cuda.cpu())


def test_tf32_on_cuda_is_within_the_emulated_tf32():
    """What the TF32 setting does to a CUDA convolution: off, the CPU's
    float32 within float32 rounding; on (compute capability 8.0+), a
    larger error, within the range of the CPU emulation (rounding to
    nearest .. truncating); it prints which emulation is nearer."""
    import torch.nn.functional as F

    from bdd100k_ins_seg.engine import tf32
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 64, 40, 48, generator=gen)
    w = torch.randn(64, 64, 3, 3, generator=gen) / 24
    cpu = F.conv2d(x, w, padding=1)

    def error(out):
        return float((out.cpu() - cpu).abs().max() / cpu.abs().max())

    results = {}
    for enabled in (False, True):
        with tf32.tf32_mode(enabled):
            results[enabled] = F.conv2d(x.cuda(), w.cuda(), padding=1).cpu()
    assert error(results[False]) < 2e-5
    if torch.cuda.get_device_capability() < (8, 0):
        assert torch.equal(results[True], results[False])  # no TF32 here
        return
    emulated = {}
    for rounding in tf32.ROUNDINGS:
        with tf32.emulate_tf32(rounding):
            out = F.conv2d(x, w, padding=1)
        emulated[rounding] = float((out - results[True]).abs().max())
    print(f'TF32 on {torch.cuda.get_device_name()}: error '
          f'{error(results[True]):.2e} (off: {error(results[False]):.2e}); '
          'distance to the emulation: ' + ', '.join(
              f'{k} {v:.2e}' for k, v in emulated.items()))
    assert error(results[True]) > 10 * error(results[False])
    assert error(results[True]) < 3 * max(
        error(F.conv2d(tf32.round_to_tf32(x, r), tf32.round_to_tf32(w, r),
                       padding=1)) for r in tf32.ROUNDINGS)


def test_sample_model_features_on_cuda_equal_cpu():
    from bdd100k_ins_seg.benchmark.model import (
        build_model,
        model_inputs,
        synthetic_image)
    torch.manual_seed(0)
    model, cfg = build_model(SAMPLE, 'cpu')
    inputs, _ = model_inputs(model, cfg, synthetic_image(320, 192))
    with torch.inference_mode():
        cpu = model.extract_feat(inputs)
        model.cuda()
        cuda = model.extract_feat(inputs.cuda())
    for a, b in zip(cpu, cuda):
        assert torch.allclose(a, b.cpu(), atol=1e-3, rtol=1e-3)


def test_benchmark_on_cuda(tmp_path):
    """Stages a and e on CUDA, checked as their CPU run is
    (tests/test_benchmark.py)."""
    from test_benchmark import run_forward_stages
    result = run_forward_stages(tmp_path, 'cuda', '320x192', repeats=2)
    assert 'TF32 off for cuDNN convolutions' in result['rows'][0]['what']
    assert result['machine']['tf32'].startswith('TF32 off')


def test_bf16_optim_wrapper_trains_the_sample_model_on_cuda():
    """BF16OptimWrapper on a CUDA device with bfloat16: the sample model's
    steps run in bfloat16 autocast (every custom op included), with float32
    weights and gradients, and the first loss is float32's within bfloat16
    rounding."""
    import copy

    from mmengine.optim import build_optim_wrapper

    from bdd100k_ins_seg.benchmark.model import build_model
    from bdd100k_ins_seg.benchmark.train_step import synthetic_batch
    from bdd100k_ins_seg.plugin.optim import BF16OptimWrapper, native_bf16
    assert native_bf16(torch.device('cuda', torch.cuda.current_device()))
    torch.manual_seed(0)
    model, cfg = build_model(SAMPLE, 'cuda')
    model.train()
    batch = synthetic_batch(model, 8, 320, 192)
    losses = {}
    for bf16 in (False, True):
        net = copy.deepcopy(model)
        wrapper = build_optim_wrapper(net, dict(
            copy.deepcopy(cfg.optim_wrapper),
            type=BF16OptimWrapper if bf16 else 'OptimWrapper'))
        losses[bf16] = []
        for _ in range(3):
            torch.manual_seed(1)  # the same proposals' sampling
            with wrapper.optim_context(net):
                parts = net.loss(batch['inputs'], batch['data_samples'])
            loss, _ = net.parse_losses(parts)
            wrapper.backward(loss)
            assert all(p.grad is None or p.grad.dtype == torch.float32
                       for p in net.parameters())
            wrapper.step()
            wrapper.zero_grad()
            losses[bf16].append(loss.item())
        if bf16:
            assert wrapper.autocast_dtype == torch.bfloat16
    assert all(np.isfinite(losses[True])), losses
    assert abs(losses[True][0] - losses[False][0]) <= 0.1 * losses[False][0]


@pytest.mark.parametrize('seed', range(12))
def test_box_paste_on_cuda_identical_to_mmdet_paste_on_cuda(seed):
    """test.py's GPU path: masks pasted inside their boxes on CUDA give
    exactly the bitmask of mmdet's CUDA paste (whole images, in chunks)
    then the writer; tests/test_paste.py's random cases (0, 1, 2 and 300
    detections, borders, ties, probabilities exactly at the threshold)."""
    from test_paste import check_random_case
    check_random_case(seed, device='cuda')


@pytest.mark.parametrize('family', ['Mask R-CNN', 'Cascade Mask R-CNN',
                                    'HRNet'])
def test_zoo_heads_on_cuda_give_identical_bitmasks(family):
    from test_paste import check_zoo_head
    check_zoo_head(family, device='cuda')


def test_zero_size_boxes_paint_nothing_on_cuda(tmp_path):
    """A box of zero width or height paints nothing on CUDA either (mmdet's
    CUDA paste paints a band across the image), in the paste and in the
    writer's files."""
    from test_paste import check_zero_size_boxes
    from test_writer import check_writer_zero_size_boxes
    check_zero_size_boxes(device='cuda')
    check_writer_zero_size_boxes(tmp_path, device='cuda')
