"""Pasting masks only inside their boxes gives exactly the bitmask of mmdet's
full-size paste followed by the writer: random cases and the zoo's heads."""
import numpy as np
import pytest
import torch
from mmengine.config import Config, ConfigDict

import bdd100k_ins_seg.plugin  # noqa: F401  (mmcv ops before mmdet.models)
from bdd100k_ins_seg.formats.bitmask import encode_bitmask
from bdd100k_ins_seg.inference.paste import (
    BoxMasks,
    enable_box_masks,
    paint,
    zero_size)
from bdd100k_ins_seg.inference.writer import render
from test_configs import CONFIG_DIR, SUFFIX, build_model

from mmdet.models.roi_heads.mask_heads import FCNMaskHead


def random_case(rng, n, height, width):
    """Boxes of every kind: tiny, huge, on and over the borders, inside;
    logits with exact zeros (probability exactly at the threshold) and ties
    in the scores."""
    kind = rng.integers(0, 6, n)
    x1 = rng.uniform(-0.3 * width, width, n)
    y1 = rng.uniform(-0.3 * height, height, n)
    w = np.exp(rng.uniform(np.log(0.3), np.log(1.5 * width), n))
    h = np.exp(rng.uniform(np.log(0.3), np.log(1.5 * height), n))
    w[kind == 0] = rng.uniform(0.05, 2, (kind == 0).sum())  # tiny
    h[kind == 0] = rng.uniform(0.05, 2, (kind == 0).sum())
    x1[kind == 1], y1[kind == 1] = 0, 0  # on the top-left border
    w[kind == 2] = width * rng.uniform(1, 3, (kind == 2).sum())  # huge
    x1[kind == 2] = -w[kind == 2] / 4
    x2 = x1 + w
    y2 = y1 + h
    x2[kind == 3], y2[kind == 3] = width, height  # to the far borders
    # Inside the image or overlapping it (mmdet cannot paste a box that
    # lies wholly outside: its window would be empty).
    x1 = np.minimum(x1, width - 0.5)
    y1 = np.minimum(y1, height - 0.5)
    x2 = np.maximum(x2, np.maximum(x1, 0) + 0.05)
    y2 = np.maximum(y2, np.maximum(y1, 0) + 0.05)
    boxes = np.stack([x1, y1, x2, y2], 1).astype(np.float32)
    logits = rng.normal(0, 3, (n, 8, 28, 28)).astype(np.float32)
    logits[rng.random((n, 8, 28, 28)) < 0.1] = 0.0  # sigmoid = 0.5 exactly
    scores = rng.choice(rng.uniform(0.05, 1, max(n // 3, 1)), n)  # ties
    labels = rng.integers(0, 8, n)
    return boxes, logits, scores.astype(np.float32), labels


def reference_and_ours(boxes, logits, scores, labels, height, width,
                       scale=(1.0, 1.0), threshold=0.5, device='cpu'):
    """mmdet's full paste + the writer, and the box paste + the writer,
    both on ``device`` (mmdet pastes in chunks of whole images on a GPU)."""
    head = FCNMaskHead(num_convs=0, in_channels=8, conv_out_channels=8,
                       num_classes=8).to(device)
    meta = dict(ori_shape=(height, width), scale_factor=scale)
    cfg = ConfigDict(mask_thr_binary=threshold)
    labels_t = torch.from_numpy(labels).to(device)
    preds = torch.from_numpy(logits).to(device)
    ref_boxes = torch.from_numpy(boxes.copy()).to(device)
    if len(boxes):
        full = head._predict_by_feat_single(preds, ref_boxes, labels_t, meta,
                                            cfg, rescale=True)
    else:  # mmdet's predict_by_feat makes empty masks itself
        full = torch.zeros((0, height, width), dtype=torch.bool)
    reference, ref_labels = encode_bitmask(full.cpu(), labels + 1, scores,
                                           ref_boxes.cpu().numpy())
    enable_box_masks(head)
    box_masks = head._predict_by_feat_single(
        preds, torch.from_numpy(boxes.copy()).to(device), labels_t, meta, cfg,
        rescale=True)
    assert isinstance(box_masks, BoxMasks)
    assert box_masks.device.type == torch.device(device).type
    ours, our_labels = render(box_masks, labels + 1, scores,
                              image_size=(height, width))
    assert our_labels == ref_labels
    return reference, ours, full, box_masks


def check_random_case(seed, device='cpu'):
    """Random case ``seed`` (0, 1, 2 and 300 detections for seeds 0-3)
    gives the same bitmask both ways on ``device``."""
    rng = np.random.default_rng(seed)
    n = [0, 1, 2, 300][seed] if seed < 4 else int(rng.integers(1, 120))
    height, width = int(rng.integers(8, 90)), int(rng.integers(8, 130))
    scale = (1.0, 1.0) if seed % 3 else tuple(rng.uniform(0.4, 2.5, 2))
    case = random_case(rng, n, height, width)
    # Boxes are in the network's input scale; mmdet divides them in place.
    boxes = case[0] * np.tile(np.asarray(scale, np.float32), 2)
    reference, ours, full, box_masks = reference_and_ours(
        boxes, *case[1:], height, width, scale, device=device)
    assert ours.shape == reference.shape == (height, width, 4)
    assert ours.dtype == reference.dtype
    np.testing.assert_array_equal(ours, reference)
    if n:
        # BoxMasks can also give mmdet's full masks (COCO AP, drawing).
        assert torch.equal(box_masks.full(), full)
        assert n < 10 or (reference[..., 3] > 0).any()


@pytest.mark.parametrize('seed', range(40))
def test_random_cases_identical_to_mmdet_paste_then_writer(seed):
    check_random_case(seed)


def test_a_paste_off_by_one_pixel_is_caught(monkeypatch):
    """The comparison above sees a one-pixel shift of the paste."""
    import bdd100k_ins_seg.inference.paste as paste
    rng = np.random.default_rng(1)
    case = random_case(rng, 30, 60, 80)
    reference, ours, _, _ = reference_and_ours(*case, 60, 80)
    assert (ours == reference).all()
    real = paste._grids

    def shifted(boxes, windows):
        windows = windows.copy()
        windows[:, [0, 2]] += 1  # sample one pixel to the right
        return real(boxes, windows)

    monkeypatch.setattr(paste, '_grids', shifted)
    _, ours, _, _ = reference_and_ours(*case, 60, 80)
    assert (ours != reference).any()


def test_paint_orders_by_score_and_keeps_input_order_among_ties():
    probs = torch.ones((3, 1, 28, 28))
    boxes = torch.tensor([[0, 0, 10, 10], [5, 5, 15, 15], [8, 0, 20, 10]],
                         dtype=torch.float32)
    masks = BoxMasks(probs, boxes, (20, 20), 0.5)
    ranks, order = paint(masks, [0.5, 0.9, 0.5])
    assert order.tolist() == [1, 0, 2]
    ranks = ranks.numpy()
    assert ranks[7, 7] == 1  # the 0.9 box wins over the 0.5 one
    assert ranks[2, 9] == 2  # the tie: the first instance wins
    assert ranks[19, 19] == 0


def test_boxes_wholly_outside_paint_nothing():
    probs = torch.ones((2, 1, 28, 28))
    boxes = torch.tensor([[30, 2, 40, 8], [-20, -20, -5, -5]],
                         dtype=torch.float32)
    ranks, _ = paint(BoxMasks(probs, boxes, (20, 20), 0.5), [0.5, 0.4])
    assert not ranks.any()


def zero_size_case(device='cpu'):
    """(masks, labels, scores): boxes of exactly zero width (on a pixel
    edge, and on a pixel centre, where mmdet's grid is 0/0), zero height
    and both, scoring above two ordinary boxes that they cross; every
    probability above the threshold."""
    boxes = torch.tensor([[10., 5., 10., 20.], [20.5, 2., 20.5, 30.],
                          [5., 12., 40., 12.], [30., 30., 30., 30.],
                          [0., 0., 60., 40.], [8., 4., 24., 16.]])
    probs = torch.full((6, 1, 28, 28), 0.9)
    masks = BoxMasks(probs.to(device), boxes.to(device), (40, 60), 0.5)
    return masks, np.array([1, 2, 3, 4, 5, 6]), np.array(
        [0.9, 0.8, 0.7, 0.6, 0.1, 0.2])


def zero_size_reference(masks, labels, scores):
    """The bitmask and labels of mmdet's CPU paste of the ordinary boxes,
    the zero-size boxes' masks left empty."""
    from mmdet.models.roi_heads.mask_heads.fcn_mask_head import \
        _do_paste_mask
    stack = torch.zeros((len(masks), 40, 60), dtype=torch.bool)
    for i in (4, 5):
        chunk, where = _do_paste_mask(masks.probs[i:i + 1].cpu(),
                                      masks.boxes[i:i + 1].cpu(), 40, 60)
        stack[(slice(i, i + 1), ) + where] = chunk >= 0.5
    return encode_bitmask(stack, labels, scores)


def check_zero_size_boxes(device='cpu'):
    """A box of zero width or height paints nothing on ``device``, where
    mmdet's CPU paste paints its centre line up to 3 pixels across and its
    whole-image (CUDA) paste a band across the image; its score label
    stays."""
    from mmdet.models.roi_heads.mask_heads.fcn_mask_head import \
        _do_paste_mask
    masks, labels, scores = zero_size_case(device)
    assert zero_size(masks.boxes).tolist() == [True] * 4 + [False] * 2
    for i in range(4):
        one = (masks.probs[i:i + 1], masks.boxes[i:i + 1], 40, 60)
        window, _ = _do_paste_mask(*one, skip_empty=True)
        whole, _ = _do_paste_mask(*one, skip_empty=False)
        band = whole[0] >= 0.5
        assert 0 < int((window >= 0.5).sum()) <= 3 * 29 < int(band.sum())
        # from one border of the image to the other
        assert ((band[:, 0].any() and band[:, -1].any())
                or (band[0].any() and band[-1].any()))
    reference, reference_labels = zero_size_reference(masks, labels, scores)
    ours, our_labels = render(masks, labels, scores, image_size=(40, 60))
    np.testing.assert_array_equal(ours, reference)
    assert our_labels == reference_labels and len(our_labels) == 6
    ranks, order = paint(masks, scores)
    assert set(ranks.unique().tolist()) == {5, 6}
    full = masks.full()
    assert not full[:4].any() and full[4:].all(dim=0).any()


def test_zero_size_boxes_paint_nothing():
    check_zero_size_boxes()


def test_a_box_a_hundredth_of_a_pixel_wide_paints_nothing_either():
    """The limit that zero-size boxes keep: mmdet's own paste of a box
    0.01 px wide or high paints nothing, in its window and on the whole
    image, and so does ours."""
    from mmdet.models.roi_heads.mask_heads.fcn_mask_head import \
        _do_paste_mask
    boxes = torch.tensor([[10., 5., 10.01, 20.], [5., 12., 40., 12.01]])
    probs = torch.full((2, 1, 28, 28), 0.9)
    for skip_empty in (True, False):
        for i in range(2):
            pasted, _ = _do_paste_mask(probs[i:i + 1], boxes[i:i + 1], 40,
                                       60, skip_empty=skip_empty)
            assert not (pasted >= 0.5).any()
    ranks, _ = paint(BoxMasks(probs, boxes, (40, 60), 0.5), [0.9, 0.8])
    assert not ranks.any()


def test_box_masks_index_like_instance_data():
    from mmengine.structures import InstanceData
    probs = torch.rand((4, 1, 28, 28))
    boxes = torch.rand((4, 4)) * 10
    boxes[:, 2:] += 10
    data = InstanceData(masks=BoxMasks(probs, boxes, (30, 30), 0.5),
                        scores=torch.tensor([0.1, 0.9, 0.4, 0.6]))
    kept = data[data.scores > 0.3]
    assert len(kept.masks) == 3
    assert torch.equal(kept.masks.probs, probs[1:])
    assert kept.masks.shape == (3, 30, 30)


FAMILIES = {
    'Mask R-CNN': 'mask_rcnn_r50_fpn_1x',
    'Cascade Mask R-CNN': 'cascade_mask_rcnn_r50_fpn_1x',
    'HRNet': 'mask_rcnn_hrnetv2p_w18_1x',
}


@pytest.mark.parametrize('family', list(FAMILIES))
def test_zoo_heads_give_identical_bitmasks(family):
    check_zoo_head(family)


def check_zoo_head(family, device='cpu'):
    """The family's real model on ``device`` (random weights, every
    detection kept, one forward): for the mask head's actual inputs
    (Cascade: the average of its stages), mmdet's full paste + the writer
    and the box paste agree."""
    from mmdet.structures import DetDataSample
    cfg = Config.fromfile(str(CONFIG_DIR / f'{FAMILIES[family]}{SUFFIX}.py'))
    cfg.model.test_cfg.rcnn.score_thr = 0.0
    cfg.model.test_cfg.rcnn.max_per_img = 100
    cfg.model.test_cfg.rpn.update(nms_pre=400, max_per_img=150)  # speed
    torch.manual_seed(0)
    model = build_model(cfg)
    model.init_weights()
    model.to(device)
    generator = torch.Generator().manual_seed(0)
    height, width = 128, 192  # the network's input; the image is larger
    ori = (180, 270)
    image = torch.randint(0, 256, (3, height, width), dtype=torch.uint8,
                          generator=generator)
    # BN statistics of this image: random weights without them blow the
    # deep HRNet features up to infinities (no boxes at all).
    norms = [m for m in model.modules()
             if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for module in norms:
        module.reset_running_stats()
        module.momentum = None
        module.train()  # also where the config sets norm_eval
    with torch.no_grad():
        model.extract_feat(model.data_preprocessor(
            dict(inputs=[image]), False)['inputs'])
    model.eval()
    switched = enable_box_masks(model)
    assert switched
    calls = []
    for name in switched:
        head = model.get_submodule(name)
        ours = head._predict_by_feat_single

        def both(mask_preds, bboxes, *args, head=head, ours=ours, **kwargs):
            full = FCNMaskHead._predict_by_feat_single(
                head, mask_preds, bboxes.clone(), *args, **kwargs)
            boxed = ours(mask_preds, bboxes, *args, **kwargs)
            calls.append((full, bboxes, boxed))
            return boxed

        head._predict_by_feat_single = both
    sample = DetDataSample(metainfo=dict(
        img_id=0, img_shape=(height, width), ori_shape=ori,
        scale_factor=(width / ori[1], height / ori[0])))
    with torch.no_grad():
        [result] = model.test_step(dict(inputs=[image], data_samples=[sample]))
    pred = result.pred_instances
    assert len(calls) == 1 and isinstance(pred.masks, BoxMasks)
    assert pred.masks.device.type == torch.device(device).type
    full, bboxes, boxed = calls[0]
    assert boxed is pred.masks and len(pred) > 20
    reference, _ = encode_bitmask(full.cpu(), pred.labels.cpu() + 1,
                                  pred.scores.cpu(), pred.bboxes.cpu())
    ours, _ = render(pred.masks, pred.labels + 1, pred.scores,
                     image_size=ori)
    assert reference[..., 3].any()
    np.testing.assert_array_equal(ours, reference)


def test_box_masks_only_where_every_consumer_takes_them():
    """Validation/test switch to box masks only when every metric is the
    BDD100K one and no hook draws masks."""
    from mmengine.config import Config

    from bdd100k_ins_seg.inference.paste import box_masks_ok
    ours = dict(type='BDD100KInsSegMetric', gt_dir='gt')
    cfg = Config(dict(val_evaluator=ours, test_evaluator=[ours],
                      default_hooks=dict(visualization=dict(
                          type='DetVisualizationHook', draw=False))))
    assert box_masks_ok(cfg, 'val') and box_masks_ok(cfg, 'test')
    cfg.test_evaluator = [ours, dict(type='CocoMetric')]
    assert not box_masks_ok(cfg, 'test')
    cfg.val_evaluator = dict(type='Evaluator', metrics=[
        dict(type='mmdet.BDD100KInsSegMetric')])
    assert box_masks_ok(cfg, 'val')
    cfg.default_hooks.visualization.draw = True
    assert not box_masks_ok(cfg, 'val')
    assert not box_masks_ok(Config(dict(val_evaluator=None)), 'val')
