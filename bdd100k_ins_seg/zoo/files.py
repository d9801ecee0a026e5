"""Checks of the published files that have no MD5 (scores json, prediction
and drawing zips), and the prediction sets inside a zip or folder."""
import json
import zipfile
from pathlib import Path

from bdd100k_ins_seg.zoo.catalogue import ChecksumError, _IMAGE_EXTS


def prediction_sets(paths):
    """The prediction folders among the relative paths of a zip or folder.

    Assumed layout of a published predictions zip (the output of the
    original ``test.py --format-only``): ``[<prefix>/]score.json`` beside
    ``[<prefix>/]bitmasks/*.png`` (or the PNGs beside ``score.json``), once
    per split. Every ``score.json`` with bitmask PNGs counts.

    Args:
        paths (Iterable[str]): '/'-separated relative paths.

    Returns:
        list[tuple[str, str, int]]: (score.json path, bitmask folder,
        number of PNGs), sorted.
    """
    paths = [p for p in paths if not p.endswith('/')]
    sets = []
    for path in sorted(paths):
        if path.rsplit('/', 1)[-1] != 'score.json':
            continue
        prefix = path[:-len('score.json')]
        for folder in (prefix + 'bitmasks/', prefix):
            pngs = [p for p in paths if p.startswith(folder)
                    and p.lower().endswith('.png')
                    and '/' not in p[len(folder):]]
            if pngs:
                sets.append((path, folder.rstrip('/') or '.', len(pngs)))
                break
    return sets


def _zip_names(path):
    """The member names of an intact zip (every CRC checked)."""
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
            names = archive.namelist()
    except (zipfile.BadZipFile, EOFError, OSError, ValueError) as e:
        raise ChecksumError(f'not a readable zip ({e})') from None
    if bad is not None:
        raise ChecksumError(f'zip member {bad} is corrupt (CRC mismatch)')
    for name in names:
        if name.startswith('/') or '..' in name.split('/'):
            raise ChecksumError(f'zip member {name!r} points outside the '
                                'folder it is extracted to')
    return names


def check_file(kind, path):
    """Check a published file of a kind that has no MD5.

    * ``scores-val`` / ``scores-test``: json in the official evaluator's
      result layout (metric -> [per-class dict, {"OVERALL": x}]);
    * ``preds``: an intact zip holding bitmask PNGs + a ``score.json`` list
      (:func:`prediction_sets`);
    * ``visuals``: an intact zip holding images.

    Raises:
        ChecksumError: what is wrong, in one line.
    """
    if kind.startswith('scores-'):
        from bdd100k_ins_seg.evaluation.results import (
            ResultFormatError,
            load_result)
        try:
            load_result(path)
        except ResultFormatError as e:
            raise ChecksumError(str(e).replace(f'{path}: ', '')) from None
    elif kind == 'preds':
        names = _zip_names(path)
        sets = prediction_sets(names)
        if not sets:
            raise ChecksumError('the zip lists no bitmasks/*.png with a '
                                'score.json')
        with zipfile.ZipFile(path) as archive:
            for score_file, _, _ in sets:
                try:
                    frames = json.loads(archive.read(score_file))
                except ValueError as e:
                    raise ChecksumError(f'{score_file} in the zip is not '
                                        f'json ({e})') from None
                if not isinstance(frames, list):
                    raise ChecksumError(f'{score_file} in the zip is not a '
                                        'list of frames')
    elif kind == 'visuals':
        names = _zip_names(path)
        if not any(n.lower().endswith(_IMAGE_EXTS) for n in names):
            raise ChecksumError('the zip lists no images')
    else:
        raise ValueError(f'no content check for {kind!r}')


def local_prediction_sets(folder):
    """:func:`prediction_sets` of an extracted folder, as absolute paths."""
    folder = Path(folder)
    paths = [p.relative_to(folder).as_posix() for p in folder.rglob('*')
             if p.is_file()]
    return [(folder / score, folder / bitmasks if bitmasks != '.' else
             folder, count)
            for score, bitmasks, count in prediction_sets(paths)]
