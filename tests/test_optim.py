"""BF16OptimWrapper: bfloat16 autocast where the device has it natively,
float32 (plainly mmengine's OptimWrapper) where it has not."""
import copy

import pytest
import torch
from mmengine.optim import OptimWrapper

from bdd100k_ins_seg.plugin import optim


def _net():
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(),
        torch.nn.Conv2d(8, 4, 3, padding=1))


def _steps(net, wrapper, count=3):
    """``count`` updates on fixed batches; the losses."""
    losses = []
    for i in range(count):
        torch.manual_seed(100 + i)
        x, target = torch.randn(2, 3, 12, 12), torch.randn(2, 4, 12, 12)
        with wrapper.optim_context(net):
            out = net(x)
            loss = ((out.float() - target) ** 2).mean()
        wrapper.update_params(loss)
        losses.append(loss.item())
    return losses


@pytest.fixture
def messages(monkeypatch):
    logged = []
    monkeypatch.setattr(optim, 'print_log',
                        lambda msg, logger=None: logged.append(msg))
    return logged


@pytest.mark.parametrize('native', [True, False])
def test_autocast_only_where_native(monkeypatch, messages, native):
    monkeypatch.setattr(optim, 'native_bf16', lambda device: native)
    net = _net()
    wrapper = optim.BF16OptimWrapper(
        optimizer=torch.optim.SGD(net.parameters(), lr=0.1))
    for _ in range(2):
        with wrapper.optim_context(net):
            out = net(torch.randn(1, 3, 8, 8))
        assert out.dtype == (torch.bfloat16 if native else torch.float32)
        assert wrapper.autocast_dtype == (torch.bfloat16 if native
                                          else None)
    assert not torch.is_autocast_enabled('cpu')  # only inside the context
    # Said once, not at every step.
    assert messages == [
        'BF16OptimWrapper: forward and losses in bfloat16 autocast on cpu'
        if native else
        'BF16OptimWrapper: cpu has no native bfloat16: training in float32']


def test_without_native_bf16_it_is_the_float32_wrapper(monkeypatch, messages):
    monkeypatch.setattr(optim, 'native_bf16', lambda device: False)
    ours, theirs = _net(), _net()
    ours_losses = _steps(ours, optim.BF16OptimWrapper(
        optimizer=torch.optim.AdamW(ours.parameters(), lr=0.01)))
    their_losses = _steps(theirs, OptimWrapper(
        optimizer=torch.optim.AdamW(theirs.parameters(), lr=0.01)))
    assert ours_losses == their_losses
    for a, b in zip(ours.parameters(), theirs.parameters()):
        assert torch.equal(a, b)


def test_bf16_steps_keep_float32_weights_and_state(monkeypatch, messages):
    """Autocast computes the forward in bfloat16 (the losses differ from
    float32's by bfloat16 rounding, not more), while the weights, the
    gradients and the optimizer state stay float32."""
    monkeypatch.setattr(optim, 'native_bf16', lambda device: True)
    ours, theirs = _net(), _net()
    wrapper = optim.BF16OptimWrapper(
        optimizer=torch.optim.AdamW(ours.parameters(), lr=0.01),
        clip_grad=dict(max_norm=10.0))
    ours_losses = _steps(ours, wrapper)
    their_losses = _steps(theirs, OptimWrapper(
        optimizer=torch.optim.AdamW(theirs.parameters(), lr=0.01),
        clip_grad=dict(max_norm=10.0)))
    assert ours_losses != their_losses  # bfloat16 did run
    for a, b in zip(ours_losses, their_losses):
        assert abs(a - b) <= 0.02 * b
    with wrapper.optim_context(ours):
        loss = ours(torch.randn(1, 3, 8, 8)).float().mean()
    wrapper.backward(loss)
    for param in ours.parameters():
        assert param.dtype == param.grad.dtype == torch.float32
    state = wrapper.optimizer.state_dict()['state']
    assert all(s['exp_avg'].dtype == torch.float32 for s in state.values())
    # Its state dict is the plain wrapper's: checkpoints go either way.
    plain = OptimWrapper(optimizer=torch.optim.AdamW(
        copy.deepcopy(ours).parameters(), lr=0.01))
    plain.load_state_dict(wrapper.state_dict())


def test_native_bf16_of_an_unknown_device_is_false():
    assert optim.native_bf16('meta') is False
    assert optim.native_bf16('npu') is False  # a type torch does not know


@pytest.fixture
def cuda_devices(monkeypatch):
    """CUDA stubbed: ``set(capabilities)`` makes devices 0, 1, ... of those
    compute capabilities, device 0 the current one. PyTorch's own
    ``is_bf16_supported()`` says yes for all of them, as it does by
    default where bfloat16 is emulated."""
    def set_capabilities(*capabilities):
        monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
        monkeypatch.setattr(torch.cuda, 'device_count',
                            lambda: len(capabilities))
        monkeypatch.setattr(torch.cuda, 'current_device', lambda: 0)

        def capability(device=None):
            if device is None or isinstance(device, int):
                return capabilities[device or 0]
            return capabilities[torch.device(device).index or 0]
        monkeypatch.setattr(torch.cuda, 'get_device_capability', capability)
        monkeypatch.setattr(torch.cuda, 'is_bf16_supported',
                            lambda including_emulation=True: True)
        monkeypatch.setattr(torch.version, 'hip', None)
    return set_capabilities


@pytest.mark.parametrize('capability,native', [
    ((7, 0), False),  # V100: bfloat16 emulated
    ((7, 5), False),  # T4
    ((8, 0), True),   # A100
    ((9, 0), True),   # H100, H200
])
def test_native_bf16_on_cuda_needs_compute_capability_8(
        cuda_devices, capability, native):
    cuda_devices(capability)
    assert optim.native_bf16('cuda') is native
    assert optim.native_bf16(torch.device('cuda', 0)) is native


def test_native_bf16_asks_about_the_models_cuda_device(cuda_devices,
                                                       messages):
    """An H100 as the current device and a V100 beside it: a model on the
    V100 trains in float32, one on the H100 in bfloat16, each said once."""
    cuda_devices((9, 0), (7, 0))
    assert optim.native_bf16('cuda:0') is True
    assert optim.native_bf16('cuda:1') is False
    wrapper = optim.BF16OptimWrapper(
        optimizer=torch.optim.SGD(_net().parameters(), lr=0.1))
    for _ in range(2):
        assert wrapper._autocast_on(torch.device('cuda', 1)) is False
        assert wrapper._autocast_on(torch.device('cuda', 0)) is True
    assert messages == [
        'BF16OptimWrapper: cuda:1 has no native bfloat16: training in '
        'float32',
        'BF16OptimWrapper: forward and losses in bfloat16 autocast on '
        'cuda:0']


@pytest.mark.parametrize('avx512_bf16,amx,onednn,native', [
    (True, False, True, True),
    (False, True, True, True),
    (False, False, True, False),  # plain AVX-512: oneDNN would emulate
    (True, True, False, False),   # a build without oneDNN's bf16
])
def test_native_bf16_on_cpu_needs_the_instructions(monkeypatch, avx512_bf16,
                                                   amx, onednn, native):
    monkeypatch.setattr(torch.cpu, '_is_avx512_bf16_supported',
                        lambda: avx512_bf16)
    monkeypatch.setattr(torch.cpu, '_is_amx_tile_supported', lambda: amx)

    class Mkldnn:
        @staticmethod
        def _is_mkldnn_bf16_supported():
            return onednn
    monkeypatch.setattr(torch.ops, 'mkldnn', Mkldnn)
    assert optim.native_bf16('cpu') is native


def test_the_wrapper_is_registered_by_the_package():
    from mmdet.registry import OPTIM_WRAPPERS
    from mmengine.optim import build_optim_wrapper
    from mmengine.registry import DefaultScope

    import bdd100k_ins_seg.plugin  # noqa: F401
    assert OPTIM_WRAPPERS.get('BF16OptimWrapper') is optim.BF16OptimWrapper
    net = _net()
    with DefaultScope.overwrite_default_scope('mmdet'):  # as in a config
        wrapper = build_optim_wrapper(net, dict(
            type='BF16OptimWrapper',
            optimizer=dict(type='AdamW', lr=1e-3, fused=True)))
    assert isinstance(wrapper, optim.BF16OptimWrapper)
