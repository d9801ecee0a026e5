"""Test helpers: a published-files host on 127.0.0.1 and synthetic
published files (scores from the official evaluator, predictions and
visuals zips) in the original host's layout. Nothing leaves the machine."""
import functools
import http.server
import json
import os
import os.path as osp
import shutil
import subprocess
import sys
import threading
import zipfile
from pathlib import Path

import pytest

import numpy as np
from PIL import Image

from bdd100k_ins_seg import zoo
from scripts import load_script

REPO = Path(__file__).resolve().parent.parent
NAME = 'mask_rcnn_r50_fpn_1x_ins_seg_bdd100k'
CLASSES = ('pedestrian', 'rider', 'car', 'truck', 'bus', 'train',
           'motorcycle', 'bicycle')


class Host:
    """A local HTTP server for a folder in the host's layout.

    ``requests`` lists the file names asked for. Per file name,
    ``behaviour`` may be 'cut' (a Content-Length, then half the body and
    a hang-up) or 'silent' (hang up without an answer). When ``gate`` is
    set (a threading.Event), answers wait for it (at most ``gate_s``).
    """

    def __init__(self, root):
        self.root = Path(root)
        self.requests = []
        self.behaviour = {}
        self.gate = None
        self.gate_s = 20
        host = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def do_GET(self):
                name = self.path.rsplit('/', 1)[-1]
                host.requests.append(name)
                if host.gate is not None:
                    host.gate.wait(host.gate_s)
                how = host.behaviour.get(name)
                if how == 'silent':
                    self.close_connection = True
                    return
                if how == 'cut':
                    body = (host.root / self.path.lstrip('/')).read_bytes()
                    self.send_response(200)
                    self.send_header('Content-Length', str(len(body)))
                    self.end_headers()
                    self.wfile.write(body[:len(body) // 2])
                    self.close_connection = True
                    return
                super().do_GET()

            def log_message(self, *args):
                pass

        class Server(http.server.ThreadingHTTPServer):
            def handle_error(self, request, client_address):
                pass  # clients that hang up (killed on purpose) are expected

        self.httpd = Server(('127.0.0.1', 0),
                            functools.partial(Handler, directory=root))
        self.url = f'http://127.0.0.1:{self.httpd.server_address[1]}'
        threading.Thread(target=self.httpd.serve_forever, args=(0.05,),
                         daemon=True).start()

    def close(self):
        if self.gate is not None:
            self.gate.set()
        self.httpd.shutdown()
        self.httpd.server_close()


def write_predictions(gt_dir, out_dir, shift=None):
    """Predictions in the format test.py writes, made from GT bitmasks.

    A GT bitmask is a valid prediction PNG (R = class, B << 8 | A =
    instance index); ``score.json`` gives instance i the score 1 - i/100.
    ``shift = (category id, dx)`` moves that class's masks dx pixels right.
    """
    os.makedirs(osp.join(out_dir, 'bitmasks'))
    frames = []
    for png in sorted(os.listdir(gt_dir)):
        bitmask = np.array(Image.open(osp.join(gt_dir, png)))
        instances = (bitmask[..., 2].astype(int) << 8) | bitmask[..., 3]
        if shift is not None:
            category, dx = shift
            moved = np.zeros_like(bitmask)
            mask = bitmask[..., 0] == category
            moved[:, dx:][mask[:, :-dx]] = bitmask[:, :-dx][mask[:, :-dx]]
            bitmask[mask] = 0
            keep = moved[..., 0] > 0
            bitmask[keep] = moved[keep]
            instances = (bitmask[..., 2].astype(int) << 8) | bitmask[..., 3]
        Image.fromarray(bitmask).save(osp.join(out_dir, 'bitmasks', png))
        labels = []
        for index in sorted(set(np.unique(instances)) - {0}):
            category = int(bitmask[..., 0][instances == index][0])
            labels.append(dict(id=f'{png[:-4]}-{index}', index=int(index),
                               score=1 - index / 100,
                               category=CLASSES[category - 1]))
        frames.append(dict(name=png[:-4] + '.jpg', labels=labels))
    with open(osp.join(out_dir, 'score.json'), 'w') as f:
        json.dump(frames, f)
    return out_dir


def official_cli(gt_dir, pred_dir, out_file):
    """``python -m bdd100k.eval.run -t ins_seg ... --out-file``: the result
    json as the official evaluator writes it."""
    proc = subprocess.run(
        [sys.executable, '-m', 'bdd100k.eval.run', '-t', 'ins_seg', '-g',
         str(gt_dir), '-r', osp.join(pred_dir, 'bitmasks'), '--score-file',
         osp.join(pred_dir, 'score.json'), '--nproc', '1', '--out-file',
         str(out_file)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return out_file


def zip_folder(folder, zip_path, prefix=''):
    with zipfile.ZipFile(zip_path, 'w', zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(Path(folder).rglob('*')):
            if path.is_file():
                archive.write(path, prefix + path.relative_to(folder)
                              .as_posix())
    return zip_path


def build_host(root, scenes_dir, scores_file, name=NAME):
    """``root/{models,scores-val,scores-test,preds,visuals}/<name>.*``.

    Args:
        scenes_dir: a make_scenes folder (``images/``, ``gt/``).
        scores_file: an official result json, published for val and test.

    Returns:
        dict: kind -> bytes of the published file.
    """
    root = Path(root)
    published = {}
    for kind in zoo.KINDS + ('md5',):
        folder, ext, _ = zoo.ARTEFACTS[kind]
        (root / folder).mkdir(parents=True, exist_ok=True)
    weights = os.urandom(50_000)
    published['weights'] = weights
    import hashlib
    (root / 'models' / f'{name}.pth').write_bytes(weights)
    (root / 'models' / f'{name}.md5').write_text(
        f'{hashlib.md5(weights).hexdigest()}  {name}.pth\n')
    for split in ('val', 'test'):
        shutil.copy(scores_file, root / f'scores-{split}' / f'{name}.json')
    preds = write_predictions(osp.join(scenes_dir, 'gt'),
                              str(root / 'preds_src'))
    zip_folder(preds, root / 'preds' / f'{name}.zip')
    zip_folder(osp.join(scenes_dir, 'images'),
               root / 'visuals' / f'{name}.zip')
    shutil.rmtree(preds)
    for kind in zoo.KINDS:
        folder, ext, _ = zoo.ARTEFACTS[kind]
        published[kind] = (root / folder / f'{name}{ext}').read_bytes()
    return published


def leftovers(cache):
    """Files of the cache that are not finished downloads: partial files,
    locks, temporary files and folders."""
    cache = Path(cache)
    if not cache.exists():
        return []
    return sorted(str(p.relative_to(cache)) for p in cache.rglob('*')
                  if p.name.startswith('.') or p.suffix in ('.part', '.lock')
                  or '.stale' in p.name)


@pytest.fixture
def script_name(monkeypatch):
    """Errors name the script as sys.argv[0] does (use it autouse)."""
    monkeypatch.setattr(sys, 'argv', ['model_zoo.py'])


def load_tool():
    """tools/model_zoo.py as a module (its main() runs in-process)."""
    return load_script('tools/model_zoo.py', 'model_zoo_tool')
