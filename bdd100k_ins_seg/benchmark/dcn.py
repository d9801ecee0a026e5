"""Stage g: the deformable convolutions' training step (forward and
backward), mmcv's ``DeformConv2d`` (DCN) and ``ModulatedDeformConv2d``
(DCNv2) on this package's torchvision-backed ops
(:mod:`bdd100k_ins_seg.plugin.ops.torchvision_ext`) against torchvision's
``deform_conv2d`` on the same tensors.

The layer: 64 channels in and out, 3x3, padding 1, on a batch of 2 maps at
stride 4 of the padded ``SETTINGS['size']`` image (2 x 64 x 48 x 80 at the
sample's 320x192), offsets of about a pixel (and, for DCNv2, masks in
(0, 1)) from a fixed generator; the loss is the output times a fixed
random tensor, summed, so every gradient is taken. Each side computes the
output and the gradients of the input, offsets, weight (and mask and bias);
before timing, the two sides' outputs and input, weight (mask, bias)
gradients are checked to agree (within 1e-4 of the largest value; the
offset gradient follows mmcv's border rule, which torchvision's does not).
The two are timed in turn, repeat after repeat
(:func:`~bdd100k_ins_seg.benchmark.interleaved_medians`); the rows give a
step's time per image of the batch of 2.
"""
import torch

from bdd100k_ins_seg.benchmark import SETTINGS, interleaved_medians, make_row

#: A training step of the mmcv module within this factor of torchvision's.
TARGET_RATIO = 1.1
#: Largest difference of outputs and gradients, relative to the largest
#: value, that counts as the same result.
TOLERANCE = 1e-4


def layer_shape(width: int, height: int) -> tuple:
    """(batch, channels, H, W) of the measured input: the stride-4 map of
    the image padded to a multiple of 32."""
    return (2, 64, -(-height // 32) * 8, -(-width // 32) * 8)


def _inputs(shape, modulated, device, seed=0):
    n, c, h, w = shape
    g = torch.Generator().manual_seed(seed)
    tensors = dict(
        x=torch.randn(n, c, h, w, generator=g),
        offset=torch.randn(n, 18, h, w, generator=g),
        weight=torch.randn(c, c, 3, 3, generator=g) / (3 * c ** 0.5),
        upstream=torch.randn(n, c, h, w, generator=g))
    if modulated:
        tensors.update(mask=torch.rand(n, 9, h, w, generator=g),
                       bias=torch.randn(c, generator=g))
    return {k: v.to(device) for k, v in tensors.items()}


def _steps(shape, modulated, device):
    """(ours, torchvision's): functions running one forward + backward
    and returning (output, {name: gradient})."""
    from mmcv.ops import DeformConv2d, ModulatedDeformConv2d
    from torchvision.ops import deform_conv2d

    data = _inputs(shape, modulated, device)
    c = shape[1]
    if modulated:
        module = ModulatedDeformConv2d(c, c, 3, padding=1).to(device)
    else:
        module = DeformConv2d(c, c, 3, padding=1, bias=False).to(device)
    with torch.no_grad():
        module.weight.copy_(data['weight'])
        if modulated:
            module.bias.copy_(data['bias'])
    leaves = {k: data[k].clone().requires_grad_()
              for k in ('x', 'offset', 'mask', 'weight', 'bias')
              if k in data}

    def grads(named):
        return {k: t.grad for k, t in named.items() if t.grad is not None}

    def ours():
        for p in module.parameters():
            p.grad = None
        x = leaves['x'].detach().requires_grad_()
        offset = leaves['offset'].detach().requires_grad_()
        named = dict(x=x, offset=offset, weight=module.weight)
        if modulated:
            mask = leaves['mask'].detach().requires_grad_()
            named.update(mask=mask, bias=module.bias)
            out = module(x, offset, mask)
        else:
            out = module(x, offset)
        (out * data['upstream']).sum().backward()
        return out.detach(), grads(named)

    def theirs():
        named = {k: t.detach().requires_grad_() for k, t in leaves.items()}
        out = deform_conv2d(named['x'], named['offset'], named['weight'],
                            named.get('bias'), padding=1,
                            mask=named.get('mask'))
        (out * data['upstream']).sum().backward()
        return out.detach(), grads(named)

    return ours, theirs


def largest_difference(ours, theirs) -> float:
    """Largest difference of the outputs and of the gradients both sides
    define alike (all but the offsets'), relative to each one's largest
    value."""
    (out_a, grads_a), (out_b, grads_b) = ours, theirs
    pairs = [(out_a, out_b)] + [(grads_a[k], grads_b[k]) for k in grads_b
                                if k != 'offset']
    return max(float((a - b).abs().max() / b.abs().max().clamp(min=1e-12))
               for a, b in pairs)


def run(config: str, device: str, repeats: int, work_dir: str) -> list:
    width, height = SETTINGS['size']
    shape = layer_shape(width, height)
    sync = torch.cuda.synchronize if device == 'cuda' else None
    size = (f"{'x'.join(map(str, shape))}, 3x3, {shape[1]} out, {device}, "
            f'{torch.get_num_threads()} threads')
    rows = []
    for modulated, name, theirs_name in (
            (False, 'DCN: mmcv DeformConv2d', 'deform_conv2d'),
            (True, 'DCNv2: mmcv ModulatedDeformConv2d',
             'deform_conv2d with mask and bias')):
        ours, theirs = _steps(shape, modulated, device)
        difference = largest_difference(ours(), theirs())
        if difference > TOLERANCE:
            raise RuntimeError(
                f'{name} computes other outputs or gradients than '
                f'torchvision (relative difference {difference:.3g})')
        ours_ms, theirs_ms = (ms / shape[0] for ms in interleaved_medians(
            [ours, theirs], repeats, sync))
        rows.append(make_row(
            'g', f'{name} forward + backward ({size}; within '
            f'{difference:.1e}; target: at most {TARGET_RATIO}x '
            "torchvision's time)", ours_ms,
            f'torchvision {theirs_name}, same tensors', theirs_ms))
    return rows
