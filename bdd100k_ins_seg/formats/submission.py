"""The evaluation server's upload: a zip of ``score.json`` and
``bitmasks/`` (the server takes bitmasks, not RLE json).

Only the bitmasks ``score.json`` lists go in, at ``bitmasks/<stem>.png``
beside ``score.json`` at the top of the zip. PNGs are stored as they are
(already compressed), ``score.json`` deflated. The zip is written to a
temporary name and renamed, so an interrupted run leaves none.
"""
import json
import os
import os.path as osp
import zipfile
from typing import Optional

from bdd100k_ins_seg.formats.bitmask import bitmask_name


def write_submission(out_dir: str, zip_path: Optional[str] = None) -> str:
    """Pack ``out_dir`` (``score.json`` + ``bitmasks/``) into ``zip_path``
    (default ``<out_dir>.zip``); returns its path.

    Raises:
        ValueError: no ``score.json``, or a listed bitmask missing.
    """
    out_dir = osp.normpath(out_dir)
    zip_path = zip_path or out_dir + '.zip'
    score_file = osp.join(out_dir, 'score.json')
    if not osp.isfile(score_file):
        raise ValueError(f'{out_dir} has no score.json (an unfinished run, '
                         'or --out-format rle)')
    with open(score_file, encoding='utf-8') as f:
        frames = json.load(f)
    names = [bitmask_name(frame['name']) for frame in frames]
    missing = [n for n in names
               if not osp.isfile(osp.join(out_dir, 'bitmasks', n))]
    if missing:
        raise ValueError(f'{len(missing)} bitmasks listed in {score_file} '
                         f'are missing, e.g. bitmasks/{missing[0]}')
    tmp = zip_path + '.tmp'
    try:
        with zipfile.ZipFile(tmp, 'w') as archive:
            archive.write(score_file, 'score.json',
                          compress_type=zipfile.ZIP_DEFLATED)
            for name in names:
                archive.write(osp.join(out_dir, 'bitmasks', name),
                              f'bitmasks/{name}',
                              compress_type=zipfile.ZIP_STORED)
        os.replace(tmp, zip_path)
    except BaseException:
        if osp.exists(tmp):
            os.remove(tmp)
        raise
    return zip_path


__all__ = ['write_submission']
