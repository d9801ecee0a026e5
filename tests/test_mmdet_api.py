"""The zoo through MMDetection's own entry points, as users reach it.

Every run here is a fresh interpreter started from a folder outside the
repository with no ``PYTHONPATH``: what works must come from the installed
distribution (its start-up ``.pth``), not from importing ``bdd100k_ins_seg``
first. The test code never imports our package before mmdet; the zoo configs
import it through ``custom_imports`` like any mmdet user's config.
"""
import json
import os
import os.path as osp
import shutil
import subprocess
import sys
import sysconfig
import textwrap
import zipfile
from pathlib import Path

import pytest

import _bdd100k_ins_seg_hook as hook

REPO = Path(__file__).resolve().parent.parent
ZOO_CONFIG = REPO / 'configs' / 'ins_seg' / \
    'mask_rcnn_r50_fpn_1x_ins_seg_bdd100k.py'
BASES = REPO / 'configs' / '_base_'


def clean_env():
    env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
    env['OMP_NUM_THREADS'] = '1'
    return env


def run_python(code_or_args, cwd, python=sys.executable, timeout=300):
    args = ['-c', textwrap.dedent(code_or_args)] if isinstance(
        code_or_args, str) else code_or_args
    proc = subprocess.run([python] + args, cwd=cwd, env=clean_env(),
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc


@pytest.fixture(scope='module')
def installed(tmp_path_factory):
    """This checkout is what the interpreter has installed, .pth included
    (``make install`` / ``pip install -e .``)."""
    pth = Path(sysconfig.get_paths()['purelib']) / hook.PTH_NAME
    assert pth.is_file(), (
        f'{pth} missing: install the project (pip install -e .) so that '
        'its start-up hook is in site-packages')
    assert pth.read_text(encoding='utf-8').strip() == hook.PTH_LINE
    cwd = tmp_path_factory.mktemp('outside')
    out = run_python(
        'import importlib.util as u; '
        'print(u.find_spec("bdd100k_ins_seg").origin)', cwd).stdout
    assert Path(out.strip()).resolve().parent.parent == REPO, (
        f'the interpreter imports bdd100k_ins_seg from {out.strip()}, not '
        f'from this checkout {REPO}: reinstall it (pip install -e .)')
    return cwd


def test_nothing_is_imported_at_start_up(installed):
    """The .pth registers a finder and imports nothing: a program that
    never touches mmcv loads none of our modules, nor torch."""
    out = run_python("""
        import sys
        names = [type(f).__name__ for f in sys.meta_path]
        print(names.count('BDD100KInsSegStandInFinder'),
              sorted(m for m in sys.modules
                     if m.startswith(('bdd100k', '_bdd100k', 'torch', 'mmcv'))))
        """, installed).stdout.strip().split(maxsplit=1)
    assert out == ['1', '[]']


TINY_ZOO_CONFIG = """
# The zoo config, shrunk for a CPU test: narrow ResNet-18, fewer proposals,
# 320x192 input. custom_imports (bdd100k_ins_seg) comes from the zoo config.
_base_ = '{zoo}'
model = dict(
    backbone=dict(depth=18, base_channels=8, init_cfg=None),
    neck=dict(in_channels=[8, 16, 32, 64], out_channels=16),
    rpn_head=dict(in_channels=16, feat_channels=16),
    roi_head=dict(
        bbox_roi_extractor=dict(out_channels=16),
        bbox_head=dict(in_channels=16, fc_out_channels=32),
        mask_roi_extractor=dict(out_channels=16),
        mask_head=dict(in_channels=16, conv_out_channels=16)),
    test_cfg=dict(rpn=dict(nms_pre=100, max_per_img=50),
                  rcnn=dict(score_thr=0.0, max_per_img=10)))
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(320, 192), keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='PackDetInputs', meta_keys=('img_id', 'img_path', 'ori_shape',
                                          'img_shape', 'scale_factor')),
]
test_dataloader = dict(dataset=dict(pipeline=test_pipeline))
"""


def _image(path, size=(320, 192)):
    import numpy as np
    from PIL import Image
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3),
                                 dtype=np.uint8)).save(path)


def test_init_detector_inference_detector_and_det_inferencer(installed):
    """mmdet.apis first, then a zoo config and a local checkpoint."""
    config = installed / 'tiny_zoo.py'
    config.write_text(TINY_ZOO_CONFIG.format(zoo=ZOO_CONFIG))
    _image(installed / 'street.jpg')
    out = run_python(f"""
        import json, sys
        from mmdet.apis import DetInferencer, inference_detector, init_detector
        assert 'bdd100k_ins_seg' not in sys.modules
        import torch
        torch.manual_seed(0)
        config, image = {str(config)!r}, 'street.jpg'
        # random weights of the zoo architecture, saved as a checkpoint
        model = init_detector(config, None, device='cpu')
        assert 'bdd100k_ins_seg' in sys.modules  # via custom_imports
        from mmdet.registry import DATASETS
        meta = DATASETS.get('BDD100KInsSegDataset').METAINFO
        torch.save({{'state_dict': model.state_dict(),
                    'meta': {{'dataset_meta': dict(meta)}}}}, 'w.pth')

        model = init_detector(config, 'w.pth', device='cpu')
        result = inference_detector(model, image)
        pred = result.pred_instances
        inferencer = DetInferencer(model=config, weights='w.pth',
                                   device='cpu', show_progress=False)
        out = inferencer(image, out_dir='vis', return_vis=True)
        [p] = out['predictions']
        print(json.dumps(dict(
            classes=list(model.dataset_meta['classes']),
            n=len(pred), mask_shape=list(pred.masks.shape[1:]),
            scores=pred.scores.tolist(),
            inferencer_scores=p['scores'],
            vis_shape=list(out['visualization'][0].shape))))
        """, installed).stdout.strip().splitlines()[-1]
    got = json.loads(out)
    assert got['classes'] == ['pedestrian', 'rider', 'car', 'truck', 'bus',
                              'train', 'motorcycle', 'bicycle']
    assert got['n'] == 10 and got['mask_shape'] == [192, 320]
    # the inferencer runs the same model on the same image
    assert got['inferencer_scores'] == pytest.approx(got['scores'],
                                                     rel=1e-5)
    assert got['vis_shape'] == [192, 320, 3]
    assert (installed / 'vis' / 'vis' / 'street.jpg').is_file()


MMDET_TEST_CONFIG = """
_base_ = [
    'mmdet::_base_/models/mask-rcnn_r50_fpn.py',
    '{bases}/datasets/bdd100k_ins_seg.py',
    '{bases}/default_runtime.py',
    'mmdet::_base_/schedules/schedule_1x.py',
]
data_root = '{data}/'
model = dict(
    backbone=dict(depth=18, base_channels=8, init_cfg=None),
    neck=dict(in_channels=[8, 16, 32, 64], out_channels=16),
    rpn_head=dict(in_channels=16, feat_channels=16),
    roi_head=dict(
        bbox_roi_extractor=dict(out_channels=16),
        bbox_head=dict(in_channels=16, fc_out_channels=32, num_classes=8),
        mask_roi_extractor=dict(out_channels=16),
        mask_head=dict(in_channels=16, conv_out_channels=16,
                       num_classes=8)),
    test_cfg=dict(rpn=dict(nms_pre=100, max_per_img=50),
                  rcnn=dict(score_thr=0.0, max_per_img=20)))
pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(160, 96), keep_ratio=True),
    dict(type='PackDetInputs', meta_keys=('img_id', 'img_path', 'ori_shape',
                                          'img_shape', 'scale_factor')),
]
test_dataloader = dict(
    num_workers=1, persistent_workers=False,
    dataset=dict(data_root=data_root, ann_file='coco.json',
                 data_prefix=dict(img='images/'), pipeline=pipeline))
test_evaluator = dict(gt_dir=data_root + 'gt', nproc=1,
                      outfile_prefix='{out}')
"""


def test_mmdet_tools_test_py(installed, tmp_path):
    """mmdet's own tools/test.py (shipped in the installed mmdet) scores a
    BDD100K config, with a dataloader worker process."""
    import mmdet
    tool = Path(mmdet.__file__).parent / '.mim' / 'tools' / 'test.py'
    assert tool.is_file()
    from test_evaluation import make_scenes
    from bdd100k_ins_seg.formats.labels import bitmasks_to_coco, write_json
    data = tmp_path / 'data'
    make_scenes(str(data), num_images=2, size=(160, 96), seed=5)
    write_json(bitmasks_to_coco(str(data / 'gt'), 1), str(data / 'coco.json'))
    config = tmp_path / 'tiny.py'
    config.write_text(MMDET_TEST_CONFIG.format(bases=BASES, data=data,
                                               out=tmp_path / 'pred'))
    import torch
    from mmengine.config import Config
    from mmengine.registry import init_default_scope
    from mmdet.registry import MODELS
    init_default_scope('mmdet')
    torch.manual_seed(0)
    model = MODELS.build(Config.fromfile(str(config)).model)
    torch.save({'state_dict': model.state_dict(), 'meta': {}},
               str(tmp_path / 'tiny.pth'))
    proc = run_python([str(tool), str(config), 'tiny.pth', '--work-dir',
                       'wd'], tmp_path)
    assert 'bdd100k/segm_AP' in proc.stdout + proc.stderr
    assert sorted(os.listdir(tmp_path / 'pred' / 'bitmasks')) == sorted(
        f'{p.stem}.png' for p in (data / 'images').iterdir())


def test_import_mmcv_ops_first_in_processes_and_dataloader_workers(
        installed, tmp_path):
    """``import mmcv.ops`` with no prior import: in dataloader workers
    (spawn: a fresh interpreter; fork) of a process that has not imported
    mmcv, then in that process itself."""
    (tmp_path / 'ops_dataset.py').write_text(textwrap.dedent("""
        import os, sys
        import torch

        class OpsDataset(torch.utils.data.Dataset):
            def __len__(self):
                return 1

            def __getitem__(self, i):
                import mmcv.ops
                dets, keep = mmcv.ops.nms(
                    torch.tensor([[0., 0, 10, 10], [1, 1, 10, 10]]),
                    torch.tensor([0.9, 0.8]), 0.5)
                return (sys.modules['mmcv._ext'].backend, keep.tolist(),
                        os.getpid())
        """))
    out = run_python("""
        import os, sys
        import torch
        from ops_dataset import OpsDataset
        assert 'mmcv' not in sys.modules
        for context in ('spawn', 'fork'):
            loader = torch.utils.data.DataLoader(
                OpsDataset(), batch_size=None, num_workers=1,
                multiprocessing_context=context)
            [(backend, keep, pid)] = list(loader)
            print(context, backend, keep, pid != os.getpid())
        from mmcv.ops import nms
        dets, keep = nms(torch.tensor([[0., 0, 10, 10], [1, 1, 10, 10]]),
                         torch.tensor([0.9, 0.8]), 0.5)
        print(sys.modules['mmcv._ext'].__spec__.origin, keep.tolist(),
              'bdd100k_ins_seg' in sys.modules)
        """, tmp_path).stdout.splitlines()
    assert out == ['spawn torchvision [0] True', 'fork torchvision [0] True',
                   f'{REPO}/bdd100k_ins_seg/plugin/ops/torchvision_ext.py [0] False']


def test_a_compiled_mmcv_ext_wins(installed, tmp_path):
    """A real ``mmcv._ext`` found by Python's path finder is used: the
    stand-in's finder, last on sys.meta_path, is never asked."""
    overlay = tmp_path / 'overlay'
    overlay.mkdir()
    # Stands for mmcv's compiled _ext*.so: same package, found first.
    (overlay / '_ext.py').write_text(textwrap.dedent("""
        def __getattr__(name):
            if name.startswith('__'):
                raise AttributeError(name)
            return lambda *args, **kwargs: 'compiled ' + name
        """))
    out = run_python(f"""
        import sys
        import mmcv
        mmcv.__path__.insert(0, {str(overlay)!r})
        import mmcv.ops
        ext = sys.modules['mmcv._ext']
        import bdd100k_ins_seg.plugin
        from bdd100k_ins_seg.plugin.ops import torchvision_ext
        print(ext.__file__, '|', ext.nms(), '|', bdd100k_ins_seg.plugin.ops_backend(),
              '|', torchvision_ext is not ext)
        """, tmp_path).stdout.strip().split(' | ')
    assert out == [str(overlay / '_ext.py'), 'compiled nms', 'mmcv', 'True']


def _build_wheel(tmp_path):
    """A regular (non-editable) wheel of this checkout."""
    src = tmp_path / 'src'
    src.mkdir()
    for name in ('setup.py', 'setup.cfg', 'pyproject.toml', 'README.md',
                 '_bdd100k_ins_seg_hook.py'):
        shutil.copy(REPO / name, src / name)
    shutil.copytree(REPO / 'bdd100k_ins_seg', src / 'bdd100k_ins_seg',
                    ignore=shutil.ignore_patterns('__pycache__'))
    run_python(['-m', 'pip', 'wheel', '--no-deps', '--no-build-isolation',
                '--no-index', '-q', '-w', str(tmp_path / 'dist'), str(src)],
               tmp_path)
    [wheel] = (tmp_path / 'dist').glob('*.whl')
    return wheel


def test_wheel_install_and_uninstall(installed, tmp_path):
    """``pip install .`` puts the .pth at the top of site-packages and
    ``pip uninstall`` removes it, in a throwaway environment that sees this
    interpreter's packages (torch, mmcv, mmdet) but not our editable
    install."""
    wheel = _build_wheel(tmp_path)
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        record = zf.read(next(n for n in names if n.endswith('RECORD')))
        assert zf.read(hook.PTH_NAME).decode().strip() == hook.PTH_LINE
    assert '_bdd100k_ins_seg_hook.py' in names
    assert 'bdd100k_ins_seg/plugin/ops/torchvision_ext.py' in names
    assert hook.PTH_NAME.encode() in record

    env_dir = tmp_path / 'venv'
    base = getattr(sys, '_base_executable', sys.executable)
    run_python(['-m', 'venv', '--without-pip', str(env_dir)], tmp_path,
               python=base)
    python = str(env_dir / 'bin' / 'python')
    site = run_python(['-c', 'import sysconfig; '
                       'print(sysconfig.get_paths()["purelib"])'],
                      tmp_path, python=python).stdout.strip()
    # a plain path entry: this interpreter's packages, none of its .pth run
    (Path(site) / 'base_packages.pth').write_text(
        sysconfig.get_paths()['purelib'] + '\n')
    # What the installed .pth registered answers for mmcv._ext (asking the
    # finder directly: importing torch and mmcv would add nothing here).
    check = ("import sys; finders = [f for f in sys.meta_path if "
             f"type(f).__name__ == {hook.FINDER_NAME!r}]; "
             "print(len(finders), finders and "
             "finders[0].find_spec('mmcv._ext').origin)")
    run_python(['-m', 'pip', 'install', '--no-deps', '--no-index', '-q',
                str(wheel)], tmp_path, python=python)
    assert (Path(site) / hook.PTH_NAME).is_file()
    out = run_python(check, tmp_path, python=python).stdout.split()
    assert out == ['1', osp.join(site, 'bdd100k_ins_seg', 'plugin', 'ops',
                                 'torchvision_ext.py')]

    run_python(['-m', 'pip', 'uninstall', '-y', '-q', 'bdd100k-ins-seg'],
               tmp_path, python=python)
    assert not (Path(site) / hook.PTH_NAME).exists()
    assert not (Path(site) / 'bdd100k_ins_seg').exists()
    out = run_python(check, tmp_path, python=python).stdout.split()
    assert out == ['0', '[]']
