"""Stage t: one training step of the config's model on CPU (forward, losses,
backward and the config's optimizer), its weights in channels_last memory
(``memory_format = 'channels_last'``, ``runners.TrainRunner``) against
NCHW, and with the separable RoIAlign forward on every channels_last map
against the size rule of ``ops.torchvision_ext.CL_FORWARD_MIN_ELEMENTS``.

The batch is 2 synthetic images of ``SETTINGS['size']`` with 15 random boxes
each (their masks fill the boxes), through the config's data preprocessor
once. The NCHW and the channels_last model start from the same weights
(untrained, or ``--checkpoint``'s); the three steps run in turn, repeat
after repeat (:func:`interleaved_medians`). The sample config is trained at
its own size: ``--size 320x192``.

An untrained model's proposals are spread over the image, and its RoI heads
see few positives: what a step costs late in a training run takes the
weights of a finished run (``--checkpoint``) and real batches
(``--train-batches N``: N batches of 2 images from the config's training
set, through its train pipeline, so at its size; call k of every step
variant takes batch k mod N, so the variants see the same batches in the
same order).

Where the CPU computes bfloat16 natively (``optim.native_bf16``), a third
model from the same weights takes the channels_last step with its forward
and losses under bfloat16 autocast (``BF16OptimWrapper``'s context), a row
against the float32 channels_last step; elsewhere the stage says that it
leaves that row out, and why.
"""
import contextlib
import copy

import numpy as np
import torch

from bdd100k_ins_seg.benchmark import (
    SETTINGS,
    interleaved_medians,
    make_row,
    weights_label)
from bdd100k_ins_seg.benchmark.model import build_model, synthetic_image

IMAGES = 2
BOXES = 15  # about as many as the sample's images have


def synthetic_batch(model, num_classes: int, width: int, height: int):
    """The data preprocessor's output for :data:`IMAGES` synthetic
    images with :data:`BOXES` box-shaped instances each."""
    from mmdet.structures import DetDataSample
    from mmdet.structures.mask import BitmapMasks
    from mmengine.structures import InstanceData
    rng = np.random.default_rng(0)
    inputs, samples = [], []
    for i in range(IMAGES):
        image = synthetic_image(width, height, seed=i)
        inputs.append(torch.from_numpy(image).permute(2, 0, 1).contiguous())
        x1 = rng.uniform(0, width * 0.8, BOXES)
        y1 = rng.uniform(0, height * 0.8, BOXES)
        x2 = np.minimum(x1 + rng.uniform(8, width * 0.3, BOXES), width)
        y2 = np.minimum(y1 + rng.uniform(8, height * 0.3, BOXES), height)
        boxes = np.stack([x1, y1, x2, y2], 1).astype(np.float32)
        masks = np.zeros((BOXES, height, width), np.uint8)
        for m, (a, b, c, d) in zip(masks, boxes.astype(int)):
            m[b:d, a:c] = 1
        sample = DetDataSample(metainfo=dict(
            img_shape=(height, width), ori_shape=(height, width),
            scale_factor=(1.0, 1.0), flip=False))
        sample.gt_instances = InstanceData(
            bboxes=torch.from_numpy(boxes),
            labels=torch.from_numpy(rng.integers(0, num_classes, BOXES)),
            masks=BitmapMasks(masks, height, width))
        samples.append(sample)
    return model.data_preprocessor(dict(inputs=inputs,
                                        data_samples=samples), True)


def dataset_batches(model, cfg, count: int) -> list:
    """``count`` batches of :data:`IMAGES` images from the config's
    training set (its train dataloader's dataset and sampler, seed 0, no
    worker processes), each through the data preprocessor."""
    from mmengine.runner import Runner
    loader_cfg = copy.deepcopy(cfg.train_dataloader)
    loader_cfg.update(batch_size=IMAGES, num_workers=0,
                      persistent_workers=False)
    try:
        loader = Runner.build_dataloader(loader_cfg, seed=0)
        batches, source = [], iter(loader)
        for _ in range(count):
            try:
                batch = next(source)
            except StopIteration:  # a finite sampler: start it again
                source = iter(loader)
                batch = next(source)
            batches.append(model.data_preprocessor(batch, True))
    except (OSError, ValueError, KeyError) as e:
        message = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise RuntimeError(f'--train-batches: cannot read the training set '
                           f'of the config: {message}') from None
    return batches


def run(config: str, device: str, repeats: int, work_dir: str) -> list:
    if device != 'cpu':
        return []  # channels_last training applies on CPU only
    from mmengine.optim import build_optim_wrapper

    from bdd100k_ins_seg.plugin import optim
    from bdd100k_ins_seg.plugin.ops import torchvision_ext

    # Stage a's detector (its switched-off mask pasting is a
    # prediction step: the losses do not call it), in training mode.
    nchw, cfg = build_model(config, 'cpu', SETTINGS['checkpoint'])
    nchw.train()
    nhwc = copy.deepcopy(nchw).to(memory_format=torch.channels_last)
    heads = nchw.roi_head.bbox_head
    num_classes = (heads[0] if isinstance(heads, torch.nn.ModuleList)
                   else heads).num_classes
    if SETTINGS['train_batches']:
        batches = dataset_batches(nchw, cfg, SETTINGS['train_batches'])
        height, width = batches[0]['inputs'].shape[-2:]
        images = (f'{len(batches)} batches of the training set '
                  f'({IMAGES} images, padded to {width}x{height})')
    else:
        width, height = SETTINGS['size']
        batches = [synthetic_batch(nchw, num_classes, width, height)]
        images = (f'{IMAGES} images {width}x{height}, {BOXES} instances '
                  'each')
    nchw_optim, nhwc_optim = (
        build_optim_wrapper(m, copy.deepcopy(cfg.optim_wrapper))
        for m in (nchw, nhwc))
    rule = torchvision_ext.CL_FORWARD_MIN_ELEMENTS

    def variant(model, optim_wrapper, separable_everywhere=False,
                autocast=False):
        calls = [0]
        context = (optim_wrapper.optim_context if autocast
                   else lambda model: contextlib.nullcontext())

        def step():
            data = batches[calls[0] % len(batches)]
            calls[0] += 1
            torchvision_ext.CL_FORWARD_MIN_ELEMENTS = \
                0 if separable_everywhere else rule
            try:
                with context(model):
                    losses = model.loss(data['inputs'], data['data_samples'])
                loss, _ = model.parse_losses(losses)
                optim_wrapper.update_params(loss)
            finally:
                torchvision_ext.CL_FORWARD_MIN_ELEMENTS = rule
        return step

    steps = [variant(nhwc, nhwc_optim), variant(nhwc, nhwc_optim, True),
             variant(nchw, nchw_optim)]
    if optim.native_bf16('cpu'):
        bf16 = copy.deepcopy(nhwc)
        steps.append(variant(bf16, build_optim_wrapper(
            bf16, dict(copy.deepcopy(cfg.optim_wrapper),
                       type=optim.BF16OptimWrapper)), autocast=True))
    else:
        print('stage t: no bfloat16 autocast row: this CPU has no native '
              'bfloat16 (AVX512-BF16 or AMX)')
    ours, separable, plain, *autocast = interleaved_medians(steps, repeats)
    optimizer = type(nchw_optim.optimizer).__name__
    what = (f'training step ({optimizer}), {images}, '
            f'{weights_label() or "untrained"}, '
            f'channels_last weights, {torch.get_num_threads()} threads')
    return [
        make_row('t', what, ours / IMAGES, 'the same, NCHW weights',
                 plain / IMAGES),
        make_row('t', what + ', RoIAlign forward by the size rule',
                 ours / IMAGES, 'separable RoIAlign forward on every map',
                 separable / IMAGES),
    ] + [
        make_row('t', what + ', bfloat16 autocast (BF16OptimWrapper)',
                 ms / IMAGES, 'the same, float32', ours / IMAGES)
        for ms in autocast]
