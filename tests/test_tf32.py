"""TF32: the settings (on, off, restored, from the config) and the CPU
emulation of what a GPU of compute capability 8.0+ does by default."""
import types

import pytest
import torch
import torch.nn.functional as F

from bdd100k_ins_seg.engine import tf32
from devices import cuda_test_settings


# ---------------------------------------------------------------- rounding
def test_round_to_tf32_keeps_10_mantissa_bits():
    ulp = 2.0 ** -10  # TF32's step at 1.0
    x = torch.tensor([1 + ulp, 1 + ulp / 2, 1 + 3 * ulp / 4, 1 + ulp / 4,
                      -(1 + ulp / 2), 2.0 ** -130, float('inf'),
                      float('-inf'), 0.0, -0.0])
    nearest = tf32.round_to_tf32(x, 'nearest')
    truncated = tf32.round_to_tf32(x, 'truncate')
    # half away from zero / the low bits dropped
    assert nearest[:5].tolist() == [1 + ulp, 1 + ulp, 1 + ulp, 1.0,
                                    -(1 + ulp)]
    assert truncated[:5].tolist() == [1 + ulp, 1.0, 1.0, 1.0, -1.0]
    assert nearest[6:].tolist() == truncated[6:].tolist() == x[6:].tolist()
    assert torch.isnan(tf32.round_to_tf32(torch.tensor([float('nan')])))[0]
    rng = torch.Generator().manual_seed(0)
    y = torch.randn(1000, generator=rng) * 10
    for rounding, bound in (('nearest', 2.0 ** -11), ('truncate', ulp)):
        r = tf32.round_to_tf32(y, rounding)
        assert not (r.view(torch.int32) & 0x1FFF).any()
        assert ((r - y).abs() <= bound * y.abs()).all()
    # float32 only; the layout is kept
    double = torch.randn(5, dtype=torch.float64)
    assert tf32.round_to_tf32(double) is double
    nhwc = torch.randn(2, 3, 4, 5).contiguous(
        memory_format=torch.channels_last)
    assert tf32.round_to_tf32(nhwc).is_contiguous(
        memory_format=torch.channels_last)
    with pytest.raises(ValueError, match='rounding'):
        tf32.round_to_tf32(y, 'even')


# ---------------------------------------------------------------- emulation
def _conv_inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(2, 8, 12, 10, generator=g),
            torch.randn(6, 8, 3, 3, generator=g), torch.randn(6, generator=g))


@pytest.mark.parametrize('rounding', tf32.ROUNDINGS)
def test_emulated_convolutions_read_tf32_inputs_and_weights(rounding):
    x, w, b = _conv_inputs()
    plain = F.conv2d(x, w, b, padding=1)
    rounded = F.conv2d(tf32.round_to_tf32(x, rounding),
                       tf32.round_to_tf32(w, rounding), b, padding=1)
    conv = torch.nn.Conv2d(8, 6, 3, padding=1)
    deconv = torch.nn.ConvTranspose2d(8, 6, 2, stride=2)
    with torch.no_grad():
        conv.weight.copy_(w)
        conv.bias.copy_(b)
    with tf32.emulate_tf32(rounding) as emulation:
        with torch.inference_mode():
            functional = F.conv2d(x, w, b, padding=1)
            module = conv(x)
            transposed = deconv(x)
        trained = conv(x)  # under autograd: aten.convolution
        trained.sum().backward()
        double = F.conv2d(x.double(), w.double(), b.double(), padding=1)
        linear = F.linear(x.flatten(1), x.flatten(1))
    assert emulation.calls == 5
    for out in (functional, module, trained):
        assert torch.equal(out, rounded)
    assert not torch.equal(rounded, plain)
    assert torch.equal(transposed, F.conv_transpose2d(
        tf32.round_to_tf32(x, rounding),
        tf32.round_to_tf32(deconv.weight.detach(), rounding),
        deconv.bias.detach(), stride=2))
    # float64 and matrix products (cuBLAS: no TF32 by default) as they are
    assert torch.equal(double, F.conv2d(x.double(), w.double(), b.double(),
                                        padding=1))
    assert torch.equal(linear, F.linear(x.flatten(1), x.flatten(1)))
    # gone outside
    assert torch.equal(F.conv2d(x, w, b, padding=1), plain)


def test_emulated_tf32_error_is_tf32s_not_float32s():
    """Against float64: float32 convolutions are within ~1e-6, the emulated
    TF32 ones within TF32's ~1e-3 but well beyond float32's error."""
    x, w, b = _conv_inputs(1)
    exact = F.conv2d(x.double(), w.double(), b.double(), padding=1)

    def error(out):
        return float((out.double() - exact).abs().max() / exact.abs().max())

    float32 = error(F.conv2d(x, w, b, padding=1))
    with tf32.emulate_tf32('nearest'):
        nearest = error(F.conv2d(x, w, b, padding=1))
    with tf32.emulate_tf32('truncate'):
        truncated = error(F.conv2d(x, w, b, padding=1))
    assert float32 < 1e-6
    assert 30 * float32 < nearest < truncated < 3e-3


def test_emulation_refuses_an_unknown_rounding():
    with pytest.raises(ValueError, match='rounding'):
        with tf32.emulate_tf32('stochastic'):
            pass


# ---------------------------------------------------------------- settings
@pytest.fixture
def restore_flags():
    """The process-wide settings as they were before the test."""
    flags = tf32._flags()
    yield
    tf32._restore(flags)


def _legacy():
    return (torch.backends.cudnn.allow_tf32,
            torch.backends.cuda.matmul.allow_tf32)


@pytest.mark.parametrize('enabled', [False, True])
def test_set_tf32_sets_both_apis_consistently(restore_flags, enabled):
    if tf32._new_api():  # a backend-wide value of the user's: overridden
        torch.backends.cudnn.fp32_precision = (
            'ieee' if enabled else 'tf32')
    tf32.set_tf32(enabled)
    assert tf32.tf32_enabled() == dict(conv=enabled, matmul=enabled)
    assert _legacy() == (enabled, enabled)  # readable: no mixed state


def test_tf32_mode_restores_the_settings(restore_flags):
    assert tf32.tf32_enabled()['conv'] is True  # PyTorch's default
    before = tf32._flags()
    with tf32.tf32_mode(False):
        assert tf32.tf32_enabled() == dict(conv=False, matmul=False)
        assert _legacy() == (False, False)
    assert tf32._flags() == before
    with tf32.tf32_mode(True):
        assert tf32.tf32_enabled() == dict(conv=True, matmul=True)
    assert tf32._flags() == before and _legacy() == (True, False)
    assert tf32.describe() == ('TF32 on for cuDNN convolutions, off for '
                               'cuBLAS matrix products')


def test_tf32_mode_restores_a_mixed_state(restore_flags):
    """A user who set the new API for convolutions only: PyTorch refuses
    to read the old flag then; the mode still restores everything."""
    if not tf32._new_api():
        pytest.fail('this PyTorch has no fp32_precision settings (< 2.9): '
                    'nothing to mix; run on the pinned torch')
    torch.backends.cudnn.conv.fp32_precision = 'ieee'
    with pytest.raises(RuntimeError, match='mix'):
        torch.backends.cudnn.allow_tf32
    before = tf32._flags()
    assert before['cudnn_allow'] is None
    with tf32.tf32_mode(False):
        assert _legacy() == (False, False)
    assert tf32._flags() == before
    assert torch.backends.cudnn.conv.fp32_precision == 'ieee'
    assert torch.backends.cudnn.rnn.fp32_precision == 'tf32'


@pytest.mark.parametrize('value,enabled', [
    (False, dict(conv=False, matmul=False)),
    (True, dict(conv=True, matmul=True)),
    (None, dict(conv=True, matmul=False)),  # PyTorch's default, untouched
])
def test_config_sets_tf32(restore_flags, value, enabled):
    env_cfg = {} if value is None else dict(tf32=value)
    assert tf32.configure(env_cfg) is value
    assert tf32.tf32_enabled() == enabled


def test_config_value_must_be_a_bool():
    with pytest.raises(ValueError, match=r"env_cfg.tf32='off': expected "
                       'True, False or None'):
        tf32.setting(dict(tf32='off'))


@pytest.mark.parametrize('runner', ['TrainRunner', 'TestRunner'])
def test_runners_apply_the_config(restore_flags, monkeypatch, runner):
    """train.py's and test.py's runners apply env_cfg.tf32 after
    mmengine's own set-up of env_cfg."""
    from mmengine.runner import Runner

    from bdd100k_ins_seg.engine import runners
    seen = []
    monkeypatch.setattr(Runner, 'setup_env',
                        lambda self, env_cfg: seen.append(env_cfg))
    cls = getattr(runners, runner)
    cls.setup_env(cls.__new__(cls), dict(tf32=False))
    assert seen == [dict(tf32=False)]
    assert tf32.tf32_enabled() == dict(conv=False, matmul=False)


def test_cuda_tests_run_with_tf32_off(restore_flags):
    """tests/conftest.py's fixture around a test marked cuda: TF32 off
    inside, the settings restored after; other tests untouched."""
    def node(marked):
        return types.SimpleNamespace(get_closest_marker=lambda name: (
            object() if marked and name == 'cuda' else None))

    before = tf32._flags()
    with cuda_test_settings(node(True)):
        assert tf32.tf32_enabled() == dict(conv=False, matmul=False)
    assert tf32._flags() == before
    with cuda_test_settings(node(False)):
        assert tf32._flags() == before


def test_emulation_can_follow_the_settings(restore_flags):
    """``when_enabled``: rounded while the settings ask cuDNN for TF32, as
    on a GPU, not inside tf32_mode(False)."""
    x, w, b = _conv_inputs()
    plain = F.conv2d(x, w, b)
    rounded = F.conv2d(tf32.round_to_tf32(x), tf32.round_to_tf32(w), b)
    assert not torch.equal(plain, rounded)
    with tf32.emulate_tf32(when_enabled=True) as emulation:
        assert torch.equal(F.conv2d(x, w, b), rounded)
        with tf32.tf32_mode(False):
            assert torch.equal(F.conv2d(x, w, b), plain)
    assert emulation.calls == 1

