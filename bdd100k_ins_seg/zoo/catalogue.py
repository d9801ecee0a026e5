"""The catalogue: ``configs/ins_seg/metafile.yml`` read and checked, names,
the published URLs, cache paths, and the README's model tables."""
import os
import os.path as osp
from dataclasses import dataclass, field
from pathlib import Path

import yaml



REPO_ROOT = Path(__file__).resolve().parents[2]
METAFILE_NAME = 'configs/ins_seg/metafile.yml'
METAFILE = REPO_ROOT / METAFILE_NAME
CACHE_ENV = 'BDD100K_INS_SEG_CACHE'
MIRROR_ENV = 'BDD100K_INS_SEG_MIRROR'
LOCK_TIMEOUT_ENV = 'BDD100K_INS_SEG_LOCK_TIMEOUT'
DEFAULT_CACHE = '~/.cache/bdd100k_ins_seg/checkpoints'
NAME_SUFFIX = '_ins_seg_bdd100k'  # every published name ends with it
LIST_HINT = '`python tools/model_zoo.py list` shows the names'


#: The original host; every published URL is ``HOST/<folder>/<name><ext>``.
HOST = 'https://dl.cv.ethz.ch/bdd100k/ins_seg'


#: kind -> (folder on the host, file extension, metafile field).
ARTEFACTS = {
    'weights': ('models', '.pth', 'Weights'),
    'md5': ('models', '.md5', 'Weights MD5'),
    'scores-val': ('scores-val', '.json', 'Scores val'),
    'scores-test': ('scores-test', '.json', 'Scores test'),
    'preds': ('preds', '.zip', 'Predictions'),
    'visuals': ('visuals', '.zip', 'Visuals'),
}
#: The kinds ``download --what`` fetches (the MD5 comes with the weights).
KINDS = ('weights', 'scores-val', 'scores-test', 'preds', 'visuals')
_CHUNK = 1 << 20  # bytes per read while downloading / hashing
_TIMEOUT_S = 60
_IMAGE_EXTS = ('.jpg', '.jpeg', '.png')


class ZooError(RuntimeError):
    """A model zoo request that cannot be served (message is one line)."""


class UnknownModelError(ZooError):
    """A model name or config that is not in the catalogue."""


class ChecksumError(ZooError):
    """A downloaded file that fails its check (MD5, or its content)."""


def published_url(kind, name):
    """The original host's URL of one published file of a model."""
    folder, ext, _ = ARTEFACTS[kind]
    return f'{HOST}/{folder}/{name}{ext}'


@dataclass(frozen=True)
class ZooEntry:
    """One published model of the catalogue.

    ``results`` maps ``(split, kind)`` to the published AP (x100), with
    split in ``('val', 'test')`` and kind in ``('mask', 'box')``. ``urls``
    maps each kind of :data:`ARTEFACTS` to its published URL.
    """
    name: str
    collection: str
    config: str  # path relative to the repository root
    weights_url: str
    md5_url: str
    backbone: str
    lr_schedule: str  # '1x' or '3x'
    epochs: int
    batch_size: int  # total images per iteration over all GPUs
    ms_train: bool
    parameters: int
    results: dict = field(default_factory=dict)
    metadata: dict = field(default_factory=dict)  # the raw Metadata block
    urls: dict = field(default_factory=dict)

    @property
    def config_path(self):
        """Absolute path of the config file."""
        return str(REPO_ROOT / self.config)

    @property
    def weights_filename(self):
        return self.name + '.pth'


_TASK_KINDS = {'Instance Segmentation': 'mask', 'Object Detection': 'box'}


def _parse_entry(model, metafile):
    name = model.get('Name', '?')
    try:
        meta = model['Metadata']
        results = {}
        for result in model['Results']:
            kind = _TASK_KINDS[result['Task']]
            split = result['Dataset'].split()[-1]
            results[(split, kind)] = float(result['Metrics'][f'{kind} AP'])
        urls = {kind: model[key] for kind, (_, _, key) in ARTEFACTS.items()}
        entry = ZooEntry(
            name=name,
            collection=model['In Collection'],
            config=model['Config'],
            weights_url=urls['weights'],
            md5_url=urls['md5'],
            backbone=str(meta['Backbone']),
            lr_schedule=str(meta['Lr schd']),
            epochs=int(meta['Epochs']),
            batch_size=int(meta['Batch Size']),
            ms_train=bool(meta['MS-train']),
            parameters=int(meta['Parameters']),
            results=results,
            metadata=dict(meta),
            urls=urls)
    except (KeyError, TypeError, ValueError) as e:
        raise ZooError(f'{metafile}: model {name!r} has a missing or bad '
                       f'field ({type(e).__name__}: {e})') from None
    for kind, url in urls.items():
        if url != published_url(kind, name):
            raise ZooError(
                f'{metafile}: model {name!r}: {ARTEFACTS[kind][2]} is {url},'
                f' not {published_url(kind, name)} (the host layout of '
                'bdd100k_ins_seg.zoo.ARTEFACTS)')
    return entry


_CATALOGUES = {}  # (path, mtime, size) -> catalogue


_YAML_LOADER = getattr(yaml, 'CSafeLoader', yaml.SafeLoader)


def load_catalogue(metafile=None):
    """Read the catalogue.

    Args:
        metafile (str | Path, optional): defaults to
            ``configs/ins_seg/metafile.yml`` of this repository.

    Returns:
        dict[str, ZooEntry]: entries by model name, in metafile order.
    """
    metafile = Path(metafile or METAFILE)
    try:
        stat = metafile.stat()
        key = (str(metafile), stat.st_mtime_ns, stat.st_size)
        if key in _CATALOGUES:  # parsed once per version of the file
            return dict(_CATALOGUES[key])
        with open(metafile, encoding='utf-8') as f:
            index = yaml.load(f, Loader=_YAML_LOADER)
    except OSError as e:
        raise ZooError(f'cannot read the model catalogue {metafile}: '
                       f'{e.strerror}') from None
    catalogue = {}
    for model in (index or {}).get('Models') or []:
        entry = _parse_entry(model, metafile)
        if entry.name in catalogue:
            raise ZooError(f'{metafile}: model {entry.name!r} is listed '
                           'twice')
        catalogue[entry.name] = entry
    _CATALOGUES[key] = catalogue
    return dict(catalogue)


def collections(metafile=None):
    """The ``Collections`` block of the metafile: {name: dict}."""
    with open(Path(metafile or METAFILE), encoding='utf-8') as f:
        index = yaml.safe_load(f)
    return {c['Name']: c for c in index.get('Collections', [])}


@dataclass(frozen=True)
class LocalModel:
    """A model of this repository without published files: its config and
    the checkpoint a local run makes (paths relative to the repository)."""
    name: str
    config: str
    checkpoint: str
    made_by: str  # the command that writes the checkpoint

    @property
    def config_path(self):
        return str(REPO_ROOT / self.config)

    @property
    def checkpoint_path(self):
        return str(REPO_ROOT / self.checkpoint)


#: Names that stand for a config beside the published models: the sample
#: model ``make demo`` trains (tools/demo.py writes its checkpoint into its
#: --work-dir, ``iter_<max_iters>.pth``). Not part of the catalogue: no
#: published files, no README table row.
LOCAL_MODELS = {
    'mask_rcnn_r18_fpn_sample': LocalModel(
        name='mask_rcnn_r18_fpn_sample',
        config='configs/sample/mask_rcnn_r18_fpn_sample.py',
        checkpoint='work_dirs/mask_rcnn_r18_fpn_sample/iter_650.pth',
        made_by='make demo'),
}


def _stem(name):
    """``name`` without folder and ``.py``/``.pth``."""
    name = str(name)
    return osp.splitext(osp.basename(name))[0] if name.endswith(
        ('.py', '.pth')) else osp.basename(name)


def closest_names(name, catalogue=None, n=3):
    """The model names (short, as the README tables show them, and the
    :data:`LOCAL_MODELS`) closest to ``name`` (difflib), best first."""
    import difflib
    catalogue = catalogue if catalogue is not None else load_catalogue()
    names = [short_name(n) for n in catalogue] + list(LOCAL_MODELS)
    return difflib.get_close_matches(short_name(_stem(name)), names, n=n,
                                     cutoff=0.6)


def _closest_hint(name, catalogue=None):
    close = closest_names(name, catalogue)
    return f' (closest: {", ".join(close)})' if close else ''


def get_entry(name, catalogue=None):
    """The catalogue entry of a model name.

    Accepts the full name, the name without ``_ins_seg_bdd100k`` (as the
    README table shows it) and ``<name>.py`` / ``<name>.pth``. An unknown
    name's error names the closest ones.
    """
    catalogue = catalogue if catalogue is not None else load_catalogue()
    stem = _stem(name) if name.endswith(('.py', '.pth')) else name
    for candidate in (stem, stem + NAME_SUFFIX):
        if candidate in catalogue:
            return catalogue[candidate]
    if stem in LOCAL_MODELS:
        local = LOCAL_MODELS[stem]
        raise UnknownModelError(
            f'{stem} has no published files: it is the model `{local.made_by}`'
            f' trains ({local.checkpoint})')
    raise UnknownModelError(
        f'unknown model {name!r}{_closest_hint(name, catalogue)}; '
        f'{LIST_HINT}')


def entry_for_config(config_path, catalogue=None):
    """The entry whose config has the file name of ``config_path`` (or
    that a model name names)."""
    catalogue = catalogue if catalogue is not None else load_catalogue()
    stem = _stem(config_path)
    for candidate in (stem, stem + NAME_SUFFIX):
        if candidate in catalogue:
            return catalogue[candidate]
    raise UnknownModelError(
        f'config {config_path} is not in the model zoo catalogue '
        f'({METAFILE_NAME}), so it has no published '
        'weights; pass a checkpoint file explicitly')


def resolve_config(spec, catalogue=None):
    """The config file meant by ``spec`` wherever a config path is taken
    (test.py, train.py, tools/benchmark.py, the Python helpers).

    * an existing file: itself;
    * a model name, without folder: a published model's (full name, or
      without ``_ins_seg_bdd100k``, with or without ``.py``) or a
      :data:`LOCAL_MODELS` one's: its config in this repository;
    * a relative path that is not there but is in this repository (run
      from another folder): the repository's file.

    Raises:
        UnknownModelError: none of these; the message names the closest
            model names.
    """
    spec = str(spec)
    if osp.isfile(spec):
        return spec
    stem = _stem(spec)
    if spec in (stem, stem + '.py'):  # a name, not a path
        if stem in LOCAL_MODELS:
            return LOCAL_MODELS[stem].config_path
        catalogue = catalogue if catalogue is not None else load_catalogue()
        for candidate in (stem, stem + NAME_SUFFIX):
            if candidate in catalogue:
                return catalogue[candidate].config_path
        raise UnknownModelError(
            f'not found, nor a model name{_closest_hint(spec, catalogue)}; '
            f'{LIST_HINT}')
    if not osp.isabs(spec) and (REPO_ROOT / spec).is_file():
        return str(REPO_ROOT / spec)
    close = closest_names(spec, catalogue)
    raise UnknownModelError('not found' + (
        f'; the closest model names, which stand for their configs: '
        f'{", ".join(close)}' if close else ''))


def local_checkpoint(config_path):
    """The local checkpoint of a :data:`LOCAL_MODELS` config (or name), or
    None for another config. Raises :class:`ZooError` when the file is not
    there yet (the message says which command makes it)."""
    try:
        path = osp.abspath(resolve_config(config_path))
    except UnknownModelError:
        return None
    found = [local for local in LOCAL_MODELS.values()
             if osp.abspath(local.config_path) == path]
    if not found:
        return None
    local = found[0]
    if not osp.isfile(local.checkpoint_path):
        raise ZooError(
            f'{local.name} has no published weights, and the checkpoint '
            f'`{local.made_by}` trains for it ({local.checkpoint}) is not '
            f'there yet: run `{local.made_by}` first, or pass a checkpoint '
            'file')
    return local.checkpoint_path


def cache_dir():
    """Folder for downloaded files (``$BDD100K_INS_SEG_CACHE``)."""
    return Path(osp.expanduser(os.environ.get(CACHE_ENV) or DEFAULT_CACHE))


def artefact_path(entry, kind):
    """Cache path of one published file of an entry.

    Weights (and their ``.md5``) lie at the top of the cache folder, the
    other kinds in the host's folder names: ``<cache>/scores-val/<name>.json``.
    """
    folder, ext, _ = ARTEFACTS[kind]
    if folder == 'models':
        return cache_dir() / (entry.name + ext)
    return cache_dir() / folder / (entry.name + ext)


def predictions_dir(entry):
    """Where the published predictions zip is extracted:
    ``<cache>/preds/<name>/``."""
    return cache_dir() / 'preds' / entry.name


def parse_kinds(what):
    """``'weights,scores-val'`` or ``'all'`` -> a tuple of :data:`KINDS`."""
    kinds = []
    for kind in (k.strip() for k in what.split(',')):
        if kind == 'all':
            kinds += KINDS
        elif kind in KINDS:
            kinds.append(kind)
        else:
            raise ZooError(f'unknown file kind {kind!r}: one of '
                           f'{", ".join(KINDS)} or all')
    return tuple(dict.fromkeys(kinds))



TABLE_BEGIN = '<!-- zoo:table -->'


TABLE_END = '<!-- /zoo:table -->'


_CASCADE_MS_NOTE = (
    '† The original table marks this model MS-train, but the config that '
    'produced the published weights trained at a single scale; so does ours.')


def short_name(name):
    """The name without ``_ins_seg_bdd100k``."""
    return name[:-len(NAME_SUFFIX)] if name.endswith(NAME_SUFFIX) else name


def _ms_cell(entry):
    if entry.metadata.get('MS-train in original table', entry.ms_train) \
            != entry.ms_train:
        return ('✓' if entry.ms_train else '–') + ' †'
    return '✓' if entry.ms_train else ''


def render_tables(catalogue=None, metafile=None):
    """The README model tables (markdown), one per collection.

    Returns:
        str: the text that belongs between :data:`TABLE_BEGIN` and
        :data:`TABLE_END`, ending with a newline.
    """
    catalogue = catalogue if catalogue is not None else load_catalogue(
        metafile)
    papers = collections(metafile)
    by_collection = {}
    for entry in catalogue.values():
        by_collection.setdefault(entry.collection, []).append(entry)
    header = ('| Model | Backbone | Batch | Lr schd | MS-train | Mask AP val '
              '| Box AP val | Scores val | Mask AP test | Box AP test '
              '| Scores test | Params | Weights | Preds | Visuals |')
    out = []
    for coll, entries in by_collection.items():
        paper = papers.get(coll, {}).get('Paper', {})
        title = f'### {coll}'
        if paper.get('URL'):
            title += f' ([paper]({paper["URL"]}))'
        out += [title, '', header, '|' + ' :-: |' * header.count(' | ')]
        notes = set()
        for e in entries:
            ms = _ms_cell(e)
            if '†' in ms:
                notes.add(_CASCADE_MS_NOTE)
            gpus = 8  # every published model: 8 GPUs
            out.append(
                f'| [{short_name(e.name)}]({e.config}) | {e.backbone} '
                f'| {e.batch_size} ({gpus}x{e.batch_size // gpus}) '
                f'| {e.lr_schedule} ({e.epochs} ep) | {ms} '
                f'| {e.results[("val", "mask")]:.2f} '
                f'| {e.results[("val", "box")]:.2f} '
                f'| [scores]({e.urls["scores-val"]}) '
                f'| {e.results[("test", "mask")]:.2f} '
                f'| {e.results[("test", "box")]:.2f} '
                f'| [scores]({e.urls["scores-test"]}) '
                f'| {e.parameters / 1e6:.1f}M '
                f'| [model]({e.weights_url}) \\| [MD5]({e.md5_url}) '
                f'| [preds]({e.urls["preds"]}) '
                f'| [visuals]({e.urls["visuals"]}) |')
        out.append('')
        for note in sorted(notes):
            out += [note, '']
    return '\n'.join(out)


def replace_table(readme_text, tables):
    """``readme_text`` with the text between the table markers replaced."""
    begin = readme_text.find(TABLE_BEGIN)
    end = readme_text.find(TABLE_END)
    if begin < 0 or end < begin:
        raise ZooError(f'README has no {TABLE_BEGIN} ... {TABLE_END} '
                       'markers for the model table')
    start = begin + len(TABLE_BEGIN)
    return readme_text[:start] + '\n' + tables + readme_text[end:]
