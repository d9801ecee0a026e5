"""The README's "Use it from Python" block runs as written, as a user would
run it: a fresh interpreter outside the repository, no PYTHONPATH, the
published weights fetched through the zoo (here from a local mirror folder
holding random weights of the same model, with their MD5)."""
import hashlib
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
NAME = 'mask_rcnn_r50_fpn_3x_ins_seg_bdd100k'


def readme_block():
    text = (REPO / 'README.md').read_text(encoding='utf-8')
    section = re.search(r'<!-- section:python-api -->(.*?)'
                        r'<!-- /section:python-api -->', text, re.S)
    assert section, 'README has no python-api section'
    [code] = re.findall(r'```python\n(.*?)```', section.group(1), re.S)
    return code


def test_readme_python_block_runs(tmp_path):
    code = readme_block()
    assert f"zoo.get_entry('{NAME[:-len('_ins_seg_bdd100k')]}')" in code

    # Random weights of the model the block names; the car logit made
    # dominant so that predictions pass the block's score threshold.
    import bdd100k_ins_seg  # noqa: F401  (this process only)
    from mmengine.config import Config
    from mmengine.registry import init_default_scope
    from mmdet.registry import MODELS
    init_default_scope('mmdet')
    cfg = Config.fromfile(str(REPO / 'configs' / 'ins_seg' / f'{NAME}.py'))
    cfg.model.backbone.init_cfg = None
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    with torch.no_grad():
        model.roi_head.bbox_head.fc_cls.weight.zero_()
        model.roi_head.bbox_head.fc_cls.bias.zero_()
        model.roi_head.bbox_head.fc_cls.bias[2] = 20.0  # class 2: car
    mirror = tmp_path / 'mirror'
    mirror.mkdir()
    weights = mirror / f'{NAME}.pth'
    torch.save({'state_dict': model.state_dict(), 'meta': {}}, weights)
    md5 = hashlib.md5(weights.read_bytes()).hexdigest()
    (mirror / f'{NAME}.md5').write_text(f'{md5}  {NAME}.pth\n')
    del model

    work = tmp_path / 'notebook'
    work.mkdir()
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (360, 640, 3), dtype=np.uint8)
    Image.fromarray(image).save(work / 'street.jpg', quality=95)
    env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
    env.update(OMP_NUM_THREADS='1', BDD100K_INS_SEG_MIRROR=str(mirror),
               BDD100K_INS_SEG_CACHE=str(tmp_path / 'cache'))
    proc = subprocess.run([sys.executable, '-c', code], cwd=work, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    printed = eval(proc.stdout.strip().splitlines()[-1])  # a list of names
    assert 0 < len(printed) <= 100 and set(printed) == {'car'}
    # fetched into the cache, verified
    assert (tmp_path / 'cache' / f'{NAME}.pth').is_file()
    drawn = np.asarray(Image.open(work / 'street_pred.jpg'))
    assert drawn.shape == image.shape
    assert np.abs(drawn.astype(int) - image.astype(int)).mean() > 1
