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
