"""Stage f: the 3x3 convolution layers of the R-50 Mask R-CNN, Winograd
F(2x2, 3x3) (:mod:`bdd100k_ins_seg.inference.fast_conv`) against the direct
convolution (``F.conv2d``: oneDNN on CPU), channels_last, same input.

The shapes follow ``SETTINGS['size']`` (the padded input's strides 4, 8,
16 and 32; the mask head's 100 RoIs at 14x14), plus two layers that
``InferenceConv2d`` leaves on the direct convolution because Winograd's
memory-bound transforms cost more there: a 64-channel one and a small
feature map. The config is not used.
"""
import torch
import torch.nn.functional as F

from bdd100k_ins_seg.benchmark import SETTINGS, interleaved_medians, make_row


def shapes(width: int, height: int) -> list:
    """(batch, C_in, C_out, H, W) of the measured layers."""
    h4, w4 = -(-height // 32) * 8, -(-width // 32) * 8  # stride 4, padded
    return [
        (1, 256, 256, h4, w4),  # FPN / RPN on P2
        (1, 256, 256, h4 // 4, w4 // 4),  # ResNet stage 3, FPN on P4
        (1, 512, 512, h4 // 8, w4 // 8),  # ResNet stage 4
        (100, 256, 256, 14, 14),  # mask head, 100 detections
        (1, 64, 64, h4, w4),  # too narrow: direct
        (1, 256, 256, max(1, h4 // 16), max(1, w4 // 16)),  # too small
    ]


def run(config: str, device: str, repeats: int, work_dir: str) -> list:
    from bdd100k_ins_seg.inference.fast_conv import (
        winograd_conv3x3,
        winograd_pays,
        winograd_weight)
    if device != 'cpu':
        return []  # the Winograd path is for CPU inference only
    width, height = SETTINGS['size']
    g = torch.Generator().manual_seed(0)
    rows = []
    for n, ci, co, h, w in shapes(width, height):
        x = torch.randn(n, ci, h, w, generator=g).contiguous(
            memory_format=torch.channels_last)
        weight = torch.randn(co, ci, 3, 3, generator=g) / (3 * ci ** 0.5)
        bias = torch.randn(co, generator=g)
        u = winograd_weight(weight)
        with torch.inference_mode():
            direct = F.conv2d(x, weight, bias, padding=1)
            ours = winograd_conv3x3(x, u, bias)
            error = float((ours - direct).abs().max() /
                          direct.abs().max())
            ours_ms, direct_ms = interleaved_medians(
                [lambda: winograd_conv3x3(x, u, bias),
                 lambda: F.conv2d(x, weight, bias, padding=1)], repeats)
        used = winograd_pays(
            torch.nn.Conv2d(ci, co, 3, padding=1, device='meta'), n * h * w)
        rows.append(make_row(
            'f', f'3x3 conv {ci}->{co}, {n}x{h}x{w}, Winograd F(2x2, 3x3)'
            f' (within {error:.1e} of direct; '
            f"{'used' if used else 'not used'} by --fuse-conv-bn), "
            f'{torch.get_num_threads()} threads', ours_ms,
            'direct convolution (oneDNN)', direct_ms))
    return rows
