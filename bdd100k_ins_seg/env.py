"""Environment report: versions, devices and the active mmcv ops backend."""
from collections import OrderedDict
from importlib import metadata


def _version(dist):
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return 'not installed'


def collect_env():
    """Return an ordered dict of facts worth pasting into a bug report."""
    import sys

    import torch
    import torchvision

    import bdd100k_ins_seg.plugin
    info = OrderedDict()
    info['Python'] = sys.version.replace('\n', ' ')
    info['PyTorch'] = torch.__version__
    info['TorchVision'] = torchvision.__version__
    info['CUDA available'] = torch.cuda.is_available()
    if torch.cuda.is_available():
        info['CUDA (torch built with)'] = torch.version.cuda
        for i in range(torch.cuda.device_count()):
            info[f'GPU {i}'] = torch.cuda.get_device_name(i)
    info['CPU threads (torch)'] = torch.get_num_threads()
    for name, dist in [('MMEngine', 'mmengine'), ('MMDetection', 'mmdet'),
                       ('MMCV', 'mmcv'), ('MMCV-lite', 'mmcv-lite'),
                       ('bdd100k', 'bdd100k'), ('scalabel', 'scalabel'),
                       ('pydantic', 'pydantic'), ('pycocotools',
                                                  'pycocotools'),
                       ('numpy', 'numpy'), ('setuptools', 'setuptools')]:
        info[name] = _version(dist)
    info['bdd100k_ins_seg'] = bdd100k_ins_seg.__version__
    backend = bdd100k_ins_seg.plugin.ops_backend()
    info['mmcv ops backend'] = {
        'torchvision': 'torchvision (RoIAlign avg, nms, DCN, DCNv2; other '
                       'mmcv ops unavailable)',
        'mmcv': 'mmcv compiled ops (mmcv._ext)'
    }.get(backend, str(backend))
    return info


#: Where the NVIDIA kernel module says its version, and the driver's
#: user-space library (which says the newest CUDA it runs).
NVIDIA_VERSION_FILE = '/proc/driver/nvidia/version'
LIBCUDA = 'libcuda.so.1'


def nvidia_driver(version_file: str = NVIDIA_VERSION_FILE,
                  libcuda: str = LIBCUDA):
    """``(release, cuda)`` of the NVIDIA driver without initialising CUDA:
    its release ('550.54.15', from the kernel module) and the newest CUDA
    version it runs ((12, 4), from ``cuDriverGetVersion``); either is None
    where it cannot be read."""
    import ctypes
    import re
    release = cuda = None
    try:
        with open(version_file, encoding='utf-8', errors='replace') as f:
            found = re.search(r'Kernel Module(?: for \S+)?\s+(\d+(?:\.\d+)+)',
                              f.read())
        release = found.group(1) if found else None
    except OSError:
        pass
    try:
        version = ctypes.c_int(0)
        if ctypes.CDLL(libcuda).cuDriverGetVersion(
                ctypes.byref(version)) == 0 and version.value > 0:
            cuda = (version.value // 1000, version.value % 1000 // 10)
    except (OSError, AttributeError):
        pass
    return release, cuda


def cuda_status():
    """``(ok, line)``: whether this PyTorch can use a CUDA device, and one
    line that says what it found, or why not (a CPU-only build, no driver,
    a driver older than the CUDA the wheel is built for, no device
    visible), with the driver's version and the wheel's CUDA version."""
    import os
    import warnings

    import torch
    wheel = torch.version.cuda
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        available = torch.cuda.is_available()
    if available:
        from bdd100k_ins_seg.engine.tf32 import describe
        index = torch.cuda.current_device()
        major, minor = torch.cuda.get_device_capability(index)
        release, cuda = nvidia_driver()
        driver = (f'driver {release or "?"}' + (
            f' (CUDA {cuda[0]}.{cuda[1]})' if cuda else ''))
        return True, (
            f'CUDA: {torch.cuda.device_count()} device(s), '
            f'{torch.cuda.get_device_name(index)} (compute capability '
            f'{major}.{minor}), {driver}, torch {torch.__version__} built '
            f'for CUDA {wheel}; {describe()}')
    if wheel is None:
        return False, (f'torch {torch.__version__} is built without CUDA: '
                       'install a CUDA build of PyTorch')
    release, cuda = nvidia_driver()
    built = f'torch {torch.__version__} is built for CUDA {wheel}'
    if release is None and cuda is None:
        return False, (f'no NVIDIA driver found ({NVIDIA_VERSION_FILE} and '
                       f'{LIBCUDA} missing); {built}')
    driver = f'the NVIDIA driver {release or "(release unknown)"}' + (
        f' runs CUDA up to {cuda[0]}.{cuda[1]}' if cuda else '')
    try:
        wheel_major = int(wheel.split('.')[0])
    except ValueError:
        wheel_major = None
    if cuda is not None and wheel_major is not None and cuda[0] < wheel_major:
        return False, (f'{driver}, but {built}: install a driver for CUDA '
                       f'{wheel} or newer, or a PyTorch built for CUDA '
                       f'{cuda[0]}.x')
    said = [str(w.message).splitlines()[0] for w in caught]
    visible = os.environ.get('CUDA_VISIBLE_DEVICES')
    return False, (f'{driver} and {built}, but torch.cuda.is_available() '
                   'is False' + (f' (CUDA_VISIBLE_DEVICES={visible!r})'
                                 if visible is not None else '')
                   + (f': {said[0]}' if said else ''))
