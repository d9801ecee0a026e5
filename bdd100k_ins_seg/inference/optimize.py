"""A faster inference forward: BatchNorm folded into the convolutions,
channels_last memory and faster convolution kernels on CPU.

In eval mode a BatchNorm layer is a fixed per-channel affine map,
``y = (x - mean) / sqrt(var + eps) * gamma + beta``. When it reads a
convolution's output and nothing else reads that output, the map can be
folded into the convolution's weight and bias (``w * s``, ``(b - mean) * s +
beta`` with ``s = gamma / sqrt(var + eps)``) and the BatchNorm replaced by an
identity: one pass over the feature map less per layer, same predictions
up to float rounding (tested within 1e-4 on the zoo's model families).

mmcv's ``fuse_conv_bn`` folds any BatchNorm registered after a conv in the
same module, whatever the forward does with them: a ``ConvModule`` with
``order=('norm', 'conv', 'act')`` gets a wrong (or, when the channel counts
differ, crashing) fold. :func:`fold_batchnorm` folds only the pairs whose
forward is known to apply the BatchNorm straight to the conv's output:

- consecutive ``Conv2d`` -> BatchNorm children of a plain ``nn.Sequential``
  (ResNet downsample, HRNet transition and fuse layers);
- mmcv's ``ConvModule`` with ``norm`` right after ``conv`` in its order;
- mmdet's ResNet/ResNeXt ``BasicBlock`` and ``Bottleneck`` (``convK`` ->
  ``normK``), and the stems of ``ResNet`` and ``HRNet`` (and subclasses
  that keep these classes' forward).

A BatchNorm after a deformable conv (mmcv's ``DeformConv2d`` has no bias)
or anywhere else is left as it is. Only eval-mode models are folded: a
model in training mode is refused (its BatchNorm may still learn, or its
weights be updated from the folded values).

:func:`optimize_for_inference` (the fold, and on CPU the channels_last
memory format and :mod:`bdd100k_ins_seg.inference.fast_conv`'s Winograd and oneDNN
convolutions) is what ``test.py --fuse-conv-bn`` and the benchmark's
optimized forward run.
"""
from typing import Dict, Iterator, List, Optional, Tuple

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

__all__ = ['fold_batchnorm', 'fold_pairs', 'optimize_for_inference',
           'optimize_runner_model', 'use_channels_last', 'count_batchnorm']


def _numbered_pairs(module: nn.Module, count: int) -> List[Tuple[str, str]]:
    """``(convK, normK name)`` for K = 1..count (mmdet's naming)."""
    return [(f'conv{k}', getattr(module, f'norm{k}_name'))
            for k in range(1, count + 1)]


def _known_pairs(module: nn.Module) -> List[Tuple[str, str]]:
    """Child names ``(conv, bn)`` of ``module`` whose forward applies
    ``bn`` directly and only to ``conv``'s output (see the module doc)."""
    from mmcv.cnn import ConvModule
    from mmdet.models.backbones.hrnet import HRNet
    from mmdet.models.backbones.resnet import BasicBlock, Bottleneck, ResNet

    if type(module).forward is nn.Sequential.forward:
        names = list(module._modules)
        return [(a, b) for a, b in zip(names, names[1:])]
    if isinstance(module, ConvModule):
        order = list(module.order)
        if (module.with_norm and order.index('norm') ==
                order.index('conv') + 1):
            return [('conv', module.norm_name)]
        return []
    # These classes and subclasses that keep their forward (ResNeXt's
    # Bottleneck, ResNetV1d); a subclass with its own forward may use its
    # layers otherwise (ResNeSt).
    forward = type(module).forward
    if forward is Bottleneck.forward:
        return _numbered_pairs(module, 3)
    if forward is BasicBlock.forward:
        return _numbered_pairs(module, 2)
    if forward is ResNet.forward and not module.deep_stem:
        return _numbered_pairs(module, 1)
    if forward is HRNet.forward:
        return _numbered_pairs(module, 2)
    return []


def fold_pairs(model: nn.Module) -> Iterator[Tuple[nn.Module, str, str]]:
    """``(parent, conv name, bn name)`` of every foldable pair of
    ``model``: a ``torch.nn.Conv2d`` (not a deformable conv) followed by a
    BatchNorm with running statistics, in a module listed in the module
    doc."""
    for parent in model.modules():
        for conv_name, bn_name in _known_pairs(parent):
            conv = parent._modules.get(conv_name)
            bn = parent._modules.get(bn_name)
            if (isinstance(conv, nn.Conv2d) and isinstance(bn, _BatchNorm)
                    and bn.track_running_stats
                    and bn.running_mean is not None
                    and bn.num_features == conv.out_channels):
                yield parent, conv_name, bn_name


def count_batchnorm(model: nn.Module) -> int:
    """BatchNorm layers left in ``model``."""
    return sum(isinstance(m, _BatchNorm) for m in model.modules())


def _check_eval(model: nn.Module, what: str) -> None:
    training = [name or 'the model' for name, m in model.named_modules()
                if m.training]
    if training:
        raise ValueError(
            f'{what}: the model is in training mode ({training[0]}'
            f'{" and others" if len(training) > 1 else ""}); call '
            'model.eval() first (BatchNorm is folded for inference only)')


@torch.no_grad()
def _fold(conv: nn.Conv2d, bn: _BatchNorm) -> None:
    """Fold ``bn`` into ``conv`` in place (computed in float64)."""
    weight = conv.weight.double()
    dtype = conv.weight.dtype
    mean = bn.running_mean.double()
    scale = torch.rsqrt(bn.running_var.double() + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight.double()
    bias = (conv.bias.double() if conv.bias is not None else
            torch.zeros_like(mean))
    bias = (bias - mean) * scale
    if bn.bias is not None:
        bias = bias + bn.bias.double()
    conv.weight = nn.Parameter(
        (weight * scale.reshape(-1, 1, 1, 1)).to(dtype),
        requires_grad=False)
    conv.bias = nn.Parameter(bias.to(dtype), requires_grad=False)


def fold_batchnorm(model: nn.Module) -> int:
    """Fold every foldable BatchNorm of ``model`` (in eval mode) into the
    convolution before it, in place; the BatchNorm becomes ``nn.Identity``.

    Returns the number of layers folded (0 for an already folded model).
    Raises ``ValueError`` if any module of ``model`` is in training mode.
    """
    _check_eval(model, 'fold_batchnorm')
    folded = 0
    for parent, conv_name, bn_name in list(fold_pairs(model)):
        _fold(parent._modules[conv_name], parent._modules[bn_name])
        parent._modules[bn_name] = nn.Identity().eval()
        if hasattr(parent, 'efficient_conv_bn_eval_forward'):
            # ConvModule's own conv+bn path would call the Identity as a BN.
            parent.efficient_conv_bn_eval_forward = None
        folded += 1
    return folded


def use_channels_last(model: nn.Module) -> bool:
    """The default of :func:`optimize_for_inference`: channels_last on CPU
    (measured faster there, ``tools/benchmark.py`` stage a), not on GPUs
    (not measured)."""
    param = next(model.parameters(), None)
    return param is not None and param.device.type == 'cpu'


def optimize_for_inference(model: nn.Module, fold_bn: bool = True,
                           channels_last: Optional[bool] = None,
                           fast_convs: Optional[bool] = None) -> Dict:
    """The inference optimizations of this package, in place, on an
    eval-mode ``model``: BatchNorm folding (:func:`fold_batchnorm`), the
    channels_last memory format for its 4-d weights (so the conv outputs,
    and the features, are channels_last: oneDNN's convolutions need no
    layout conversions then; the inputs may stay NCHW) and
    :func:`bdd100k_ins_seg.inference.fast_conv.use_fast_convs` (Winograd for the wide
    3x3 convolutions, oneDNN for the 1x1 ones; CPU only, the layers fall
    back to ``nn.Conv2d``'s forward elsewhere). Default ``channels_last``
    and ``fast_convs``: :func:`use_channels_last`.

    Returns ``{'folded': BatchNorms folded, 'left': BatchNorms left,
    'channels_last': bool, 'winograd': 3x3 layers for Winograd,
    'onednn_1x1': 1x1 layers}``. Raises ``ValueError`` for a model in
    training mode.
    """
    _check_eval(model, 'optimize_for_inference')
    folded = fold_batchnorm(model) if fold_bn else 0
    if channels_last is None:
        channels_last = use_channels_last(model)
    if fast_convs is None:
        fast_convs = use_channels_last(model)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    convs = dict(winograd=0, onednn_1x1=0)
    if fast_convs:
        from bdd100k_ins_seg.inference.fast_conv import use_fast_convs
        convs = use_fast_convs(model)
    return dict(folded=folded, left=count_batchnorm(model),
                channels_last=bool(channels_last), **convs)


def optimize_runner_model(runner) -> Dict:
    """``test.py --fuse-conv-bn``: put the runner's model (unwrapped from
    a distributed wrapper) in eval mode, optimize it for inference and log
    what was folded. Call it after the checkpoint is loaded."""
    from mmengine.model import is_model_wrapper
    model = runner.model.module if is_model_wrapper(runner.model) \
        else runner.model
    model.eval()  # the test loop sets it too; folding needs it first
    done = optimize_for_inference(model)
    runner.logger.info(
        f"--fuse-conv-bn: {done['folded']} BatchNorm layers folded into "
        'their convolutions' + (
            f", {done['left']} left (after deformable convs or other layers "
            'they cannot be folded into)' if done['left'] else '') +
        ('; channels_last memory format' if done['channels_last'] else '') +
        (f"; {done['winograd']} 3x3 convolutions on Winograd F(2x2, 3x3), "
         f"{done['onednn_1x1']} 1x1 on oneDNN" if done['winograd'] or
         done['onednn_1x1'] else ''))
    return done
