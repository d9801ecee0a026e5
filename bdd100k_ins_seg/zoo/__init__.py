"""The model zoo catalogue and its published files.

The catalogue is ``configs/ins_seg/metafile.yml`` (OpenMMLab model-index
format): one entry per published model, whose name is both the config stem
and the stem of every published file. The original host publishes six
files per model, one folder per kind (:data:`ARTEFACTS`)::

    https://dl.cv.ethz.ch/bdd100k/ins_seg/models/<name>.pth       weights
    https://dl.cv.ethz.ch/bdd100k/ins_seg/models/<name>.md5       their MD5
    https://dl.cv.ethz.ch/bdd100k/ins_seg/scores-val/<name>.json  val scores
    https://dl.cv.ethz.ch/bdd100k/ins_seg/scores-test/<name>.json test scores
    https://dl.cv.ethz.ch/bdd100k/ins_seg/preds/<name>.zip        predictions
    https://dl.cv.ethz.ch/bdd100k/ins_seg/visuals/<name>.zip      drawings

The metafile spells the URLs out (as ``mim`` reads them); loading it checks
each one against this layout. Files are fetched on demand:

* from the original host, or from ``$BDD100K_INS_SEG_MIRROR``: a base URL
  or local folder in the host's layout (``<mirror>/models/<name>.pth``,
  ``<mirror>/scores-val/<name>.json``, ...); a mirror ending in ``/models``
  stands for its parent, and a local folder may also hold the files flat;
* into ``~/.cache/bdd100k_ins_seg/checkpoints`` (``$BDD100K_INS_SEG_CACHE``):
  weights at the top, the other kinds in ``scores-val/``, ``scores-test/``,
  ``preds/`` and ``visuals/`` (the host's folders);
* through a temporary file that is renamed into place only after it passed
  its check: the published MD5 for weights; for the kinds without MD5, the
  scores json must have the official evaluator's result layout and a zip
  must be intact (CRCs) and list what it should (:func:`check_file`). A
  file that fails is deleted and an error names it;
* once: concurrent processes (ranks of one job, or two jobs) lock a file
  next to the destination (:class:`DownloadLock`: the operating system's
  ``flock``, released when its holder dies; a pid-file lock where the file
  system has none); one downloads, the others wait and reuse its file. A
  lock that showed no progress for ``$BDD100K_INS_SEG_LOCK_TIMEOUT``
  seconds is broken.

Published predictions are extracted next to their zip, into
``<cache>/preds/<name>/`` (:func:`extract_predictions`).

The README's model tables are generated from the same catalogue
(:func:`render_tables`, ``python tools/model_zoo.py readme``). This package
imports neither torch nor mmdet (a model's parameter count is
:func:`bdd100k_ins_seg.plugin.models.count_parameters`).

:mod:`.catalogue` (entries, names, tables), :mod:`.download` (fetch,
verify), :mod:`.files` (content checks), :mod:`.lock` (one download per
file), :mod:`.compare` (a result against the published numbers); the
public names of the first four are exported here: ``from bdd100k_ins_seg
import zoo; zoo.fetch(...)``.
"""
from bdd100k_ins_seg.zoo.catalogue import (
    ARTEFACTS, CACHE_ENV, DEFAULT_CACHE, HOST, KINDS, LIST_HINT,
    LOCK_TIMEOUT_ENV, METAFILE, METAFILE_NAME, MIRROR_ENV, NAME_SUFFIX,
    REPO_ROOT, TABLE_BEGIN, TABLE_END, ChecksumError, UnknownModelError,
    ZooEntry, ZooError, artefact_path, cache_dir, collections,
    entry_for_config, get_entry, load_catalogue,
    parse_kinds, predictions_dir, published_url, render_tables,
    replace_table, short_name, LOCAL_MODELS, LocalModel, closest_names,
    local_checkpoint, resolve_config)
from bdd100k_ins_seg.zoo.download import (checkpoint_for_config, download,
                                          expected_md5, extract_predictions,
                                          fetch, file_md5, resolve_weights,
                                          verify)
from bdd100k_ins_seg.zoo.files import (check_file, local_prediction_sets,
                                       prediction_sets)
from bdd100k_ins_seg.zoo.lock import DownloadLock

__all__ = [
    'ARTEFACTS', 'CACHE_ENV', 'DEFAULT_CACHE', 'HOST', 'KINDS', 'LIST_HINT',
    'LOCK_TIMEOUT_ENV', 'METAFILE', 'METAFILE_NAME', 'MIRROR_ENV',
    'NAME_SUFFIX', 'REPO_ROOT', 'TABLE_BEGIN', 'TABLE_END', 'ChecksumError',
    'UnknownModelError', 'ZooEntry', 'ZooError', 'artefact_path',
    'cache_dir', 'collections', 'entry_for_config',
    'get_entry', 'load_catalogue', 'parse_kinds', 'predictions_dir',
    'published_url', 'render_tables', 'replace_table', 'short_name',
    'LOCAL_MODELS', 'LocalModel', 'closest_names', 'local_checkpoint',
    'resolve_config',
    'checkpoint_for_config', 'download', 'expected_md5',
    'extract_predictions', 'fetch', 'file_md5', 'resolve_weights', 'verify',
    'check_file', 'local_prediction_sets', 'prediction_sets', 'DownloadLock'
]
