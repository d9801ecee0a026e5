"""Stages a and e: the model forward alone, and against torchvision's
``maskrcnn_resnet50_fpn`` on the same image with the same threads.

"Forward alone" is the network up to the per-detection mask logits (28x28):
pasting masks into the full image is post-processing (stage b). The
torchvision model is timed the same way (its ``postprocess``, which pastes,
is left out), with its input size, class count, proposals and detections
set like the zoo's Mask R-CNN (720/1280 px, 8 classes + background, 1000
proposals, up to 100 detections at score >= 0), and weights=None (the
speed does not depend on the values; random weights give the full 100
detections to both).

Stage a gives the plain forward and the optimized one
(:func:`bdd100k_ins_seg.inference.optimize.optimize_for_inference`, what ``test.py
--fuse-conv-bn`` runs: BN folding, and on CPU channels_last memory and
:mod:`bdd100k_ins_seg.inference.fast_conv`'s Winograd 3x3 convolutions) against it;
stage e the optimized forward against torchvision's (its default memory
format and FrozenBatchNorm). The three
are timed in turn, repeat after repeat (:func:`interleaved_medians`), and
the two forwards' feature pyramids are checked to agree first (with these
untrained BN statistics the fold changes little: the equality of the
predictions on non-trivial ones is tested in ``tests/test_optimize.py``).
On CUDA that check runs with TF32 off (``engine.tf32.tf32_mode``):
PyTorch's default TF32 convolutions round each forward by
~1e-3 on their own (emulated on the sample model at 320x192: 7.7e-4 of a
level's largest value rounding to nearest, 5.1e-3 truncating), which says
nothing about the fold; the timings keep the process's TF32 setting,
named in the rows.
"""
import copy
import os.path as osp
import warnings

import numpy as np

from bdd100k_ins_seg.benchmark import (
    SETTINGS,
    interleaved_medians,
    make_row,
    weights_label)


#: How far (relative to each level's largest value) the optimized
#: forward's feature pyramid may be from the plain one's: float32 gives
#: ~2e-6 on the sample model, TF32 on both sides (emulated) ~7e-4.
FEATURE_TOLERANCE = 1e-3


def synthetic_image(width: int, height: int, seed: int = 0) -> np.ndarray:
    """(H, W, 3) uint8, smooth noise (a JPEG-like image, not flat)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (height // 16 + 1, width // 16 + 1, 3),
                         dtype=np.uint8)
    return np.ascontiguousarray(
        small.repeat(16, 0).repeat(16, 1)[:height, :width])


def build_model(config: str, device: str, checkpoint: str = None):
    """The config's detector in eval mode, its mask pasting switched off
    (see the module doc); untrained, or with the weights of
    ``checkpoint``."""
    from mmdet.apis import init_detector
    from mmengine.config import Config

    from bdd100k_ins_seg.plugin.config_lookup import install_base_config_lookup
    install_base_config_lookup()
    cfg = Config.fromfile(config)
    with warnings.catch_warnings():
        # "checkpoint is None, use COCO classes": untrained on purpose.
        warnings.simplefilter('ignore', UserWarning)
        model = init_detector(cfg, checkpoint=None, device=device)
    if checkpoint:
        from mmengine.runner import load_checkpoint
        load_checkpoint(model, checkpoint, map_location='cpu', strict=True,
                        logger='silent')
    model.eval()
    heads = getattr(model.roi_head, 'mask_head', None)
    if heads is not None:
        heads = heads if hasattr(heads, '__len__') else [heads]
        for head in heads:
            head.predict_by_feat = _keep_logits
    return model, cfg


def _keep_logits(mask_preds, results_list, *args, **kwargs):
    return results_list


def model_inputs(model, cfg, image: np.ndarray):
    """The test pipeline + data preprocessor applied to ``image``:
    (inputs (1, 3, H, W) on the model's device, data_samples)."""
    from mmcv.transforms import Compose
    pipeline = []
    for step in cfg.test_dataloader.dataset.pipeline:
        step = dict(step)
        kind = str(step['type'])
        if kind.endswith('LoadImageFromFile'):
            step['type'] = 'mmdet.LoadImageFromNDArray'
        elif kind.endswith('LoadAnnotations'):
            continue
        pipeline.append(step)
    data = Compose(pipeline)(dict(img=image, img_id=0))
    batch = model.data_preprocessor(
        dict(inputs=[data['inputs']], data_samples=[data['data_samples']]),
        False)
    return batch['inputs'], batch['data_samples']


def torchvision_model(device: str, width: int, height: int):
    from torchvision.models.detection import maskrcnn_resnet50_fpn
    model = maskrcnn_resnet50_fpn(
        weights=None, weights_backbone=None, num_classes=9,
        min_size=min(width, height), max_size=max(width, height),
        box_score_thresh=0.0, box_detections_per_img=100,
        rpn_pre_nms_top_n_test=1000, rpn_post_nms_top_n_test=1000)
    model.transform.postprocess = lambda result, *args: result
    return model.eval().to(device)


def largest_difference(a, b) -> float:
    """Largest difference between two ``pred_instances``: of the scores,
    and of the boxes relative to their largest coordinate; inf if the
    detections differ in number or labels."""
    if len(a) != len(b) or not bool((a.labels == b.labels).all()):
        return float('inf')
    if not len(a):
        return 0.0
    boxes = float((a.bboxes - b.bboxes).abs().max() /
                  a.bboxes.abs().max().clamp(min=1))
    return max(boxes, float((a.scores - b.scores).abs().max()))


def feature_difference(a, b) -> float:
    """Largest difference between two models' feature pyramids
    (``extract_feat``), relative to each level's largest value."""
    return max(float((x - y).abs().max() / x.abs().max().clamp(min=1e-12))
               for x, y in zip(a, b))


def run(config: str, device: str, repeats: int, work_dir: str) -> list:
    import torch

    from bdd100k_ins_seg.inference.optimize import optimize_for_inference
    width, height = SETTINGS['size']
    image = synthetic_image(width, height)
    model, cfg = build_model(config, device, SETTINGS['checkpoint'])
    inputs, samples = model_inputs(model, cfg, image)
    fast = copy.deepcopy(model)
    done = optimize_for_inference(fast)
    sync = torch.cuda.synchronize if device == 'cuda' else None

    def forward(net):
        def call():
            with torch.inference_mode():
                return net.predict(inputs, samples, rescale=False)
        return call

    # The two feature pyramids must agree. The detections are compared
    # too, for the row's label only: untrained scores are near ties
    # (~1/9 each), so a rounding difference may swap two detections.
    from bdd100k_ins_seg.engine import tf32
    with torch.inference_mode(), tf32.tf32_mode(False):
        features = feature_difference(model.extract_feat(inputs),
                                      fast.extract_feat(inputs))
    if features > FEATURE_TOLERANCE:
        raise RuntimeError(f'the optimized forward of {config} computes '
                           'other features than the plain one (relative '
                           f'difference {features:.3g})')
    # predict() puts its results into the data samples it is given (the
    # same objects for every call): take each call's out at once.
    plain = forward(model)()[0].pred_instances
    difference = largest_difference(plain, forward(fast)()[0].pred_instances)
    tv = torchvision_model(device, width, height)
    tv_input = [torch.from_numpy(image[..., ::-1].copy()).permute(
        2, 0, 1).float().div(255).to(device)]

    def theirs():
        with torch.inference_mode():
            return tv(tv_input)

    plain_ms, fast_ms, tv_ms = interleaved_medians(
        [forward(model), forward(fast), theirs], repeats, sync)
    name = osp.splitext(osp.basename(config))[0]
    where = f'{width}x{height}, {device}, {torch.get_num_threads()} threads'
    if device == 'cuda':
        where += ', ' + tf32.describe()
    if weights_label():
        where += ', ' + weights_label()
    optimized = (f"{name} optimized forward ({done['folded']} BN folded"
                 + (', channels_last' if done['channels_last'] else '')
                 + (f", {done['winograd']} Winograd 3x3"
                    if done['winograd'] else '') +
                 f'; features within {features:.1e}, predictions '
                 + (f'within {difference:.1e}' if difference < float('inf')
                    else 'near-tie order differs') + f'), {where}')
    return [
        make_row('a', f'{name} forward, {where}', plain_ms),
        make_row('a', optimized, fast_ms, 'the plain forward', plain_ms),
        make_row('e', optimized, fast_ms,
                 'torchvision maskrcnn_resnet50_fpn forward', tv_ms),
    ]
