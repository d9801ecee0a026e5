"""Print versions, devices and the active mmcv ops backend.

    python tools/collect_env.py
    python tools/collect_env.py --check [REQUIREMENTS ...]
    python tools/collect_env.py --cuda

Paste its output into every bug report. ``--check`` says in one line whether
this interpreter's environment can run this checkout (``make test
ENV_PYTHON=...``): the requirement files (default: requirements/stack.txt)
satisfied, torch >= 2.6, this checkout installed (``pip install --no-deps
-e .``) with its start-up hook; exit status 1 and the first problem if not.
``--cuda`` says in one line whether PyTorch can use a CUDA device (``make
gpu-check`` asks first): the device, the driver, the CUDA version the wheel
is built for and the TF32 setting; or why not, with the driver's version
and the wheel's CUDA version; exit status 1 then.
"""
import argparse
import os.path as osp
import sys

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
FINDER_NAME = 'BDD100KInsSegStandInFinder'  # _bdd100k_ins_seg_hook's
MIN_TORCH = (2, 6)
INSTALL_HINT = 'pip install --no-deps -e . (README "Install")'


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split('\n')[0],
        epilog='Paste its output into every bug report.')
    parser.add_argument(
        '--check', nargs='*', metavar='REQUIREMENTS',
        help='check instead that this environment runs this checkout, '
        'against these requirement files (default: requirements/stack.txt)')
    parser.add_argument(
        '--cuda', action='store_true',
        help='say in one line whether PyTorch can use a CUDA device here '
        '(device, driver, the CUDA version of the PyTorch build), or why '
        'not; exit status 1 if not')
    return parser.parse_args(argv)


def _requirements(path):
    """The requirement lines of ``path``, following ``-r`` includes."""
    lines = []
    with open(path, encoding='utf-8') as f:
        for line in f:
            line = line.split('#', 1)[0].strip()
            if line.startswith('-r'):
                lines += _requirements(
                    osp.join(osp.dirname(path), line[2:].strip()))
            elif line:
                lines.append(line)
    return lines


def _requirement_type():
    try:
        from packaging.requirements import Requirement
    except ImportError:  # packaging comes with pip too
        from pip._vendor.packaging.requirements import Requirement
    return Requirement


def readiness_problem(files, hook_at_start):
    """The first reason this environment cannot run this checkout, as
    ``(what, why)``, or None.

    Args:
        files: requirement files whose every line must be satisfied.
        hook_at_start: whether the start-up finder was on ``sys.meta_path``
            before anything of this project was imported.
    """
    from importlib import metadata
    if sys.version_info < (3, 10):
        return 'Python', f'{sys.version.split()[0]} is older than 3.10'
    Requirement = _requirement_type()
    for path in files:
        try:
            lines = _requirements(path)
        except OSError as error:
            return path, error.strerror or str(error)
        for line in lines:
            req = Requirement(line)
            try:
                have = metadata.version(req.name)
            except metadata.PackageNotFoundError:
                return req.name, (f'not installed ({path} needs {line}): '
                                  f'pip install -r {path}')
            if not req.specifier.contains(have, prereleases=True):
                return req.name, (f'{have} is installed, {path} needs '
                                  f'{line}: pip install -r {path}')
    try:
        import torch
        import torchvision  # noqa: F401
    except ImportError as error:
        return 'torch', f'cannot be imported: {error}'
    version = tuple(int(p) for p in
                    torch.__version__.split('+')[0].split('.')[:2])
    if version < MIN_TORCH:
        return 'torch', f'{torch.__version__} is older than 2.6'
    try:
        import bdd100k_ins_seg
    except ImportError as error:
        return 'bdd100k_ins_seg', f'cannot be imported ({error}): ' \
            + INSTALL_HINT
    where = osp.dirname(osp.dirname(osp.abspath(bdd100k_ins_seg.__file__)))
    if osp.realpath(where) != osp.realpath(ROOT):
        return 'bdd100k_ins_seg', (f'is imported from {where}, not from this '
                                   f'checkout {ROOT}: {INSTALL_HINT}')
    if not hook_at_start:
        return 'bdd100k_ins_seg', ('installed without its start-up hook '
                                   '(mmcv._ext in any import order): '
                                   + INSTALL_HINT)
    return None


def check(files):
    """``--check``: one line on stdout and status 0, or one error line on
    stderr and status 1."""
    hook_at_start = any(type(f).__name__ == FINDER_NAME
                        for f in sys.meta_path)
    problem = readiness_problem(files, hook_at_start)
    if problem is not None:
        what, why = problem
        sys.stderr.write(f'collect_env.py: error: {what}: {why}\n')
        return 1
    import torch

    import mmdet
    print(f'{sys.executable} can run {ROOT}: Python '
          f'{sys.version.split()[0]}, torch {torch.__version__} (CUDA '
          f'available: {torch.cuda.is_available()}), mmdet '
          f'{mmdet.__version__}')
    return 0


def cuda():
    """``--cuda``: one line on stdout and status 0, or one error line on
    stderr and status 1 (``bdd100k_ins_seg.env.cuda_status``)."""
    from bdd100k_ins_seg.env import cuda_status
    ok, line = cuda_status()
    if ok:
        print(line, flush=True)
        return 0
    sys.stderr.write(f'collect_env.py: error: CUDA: {line}\n')
    return 1


def main(argv=None):
    args = parse_args(argv)
    if args.cuda:
        sys.exit(cuda())
    if args.check is not None:
        sys.exit(check(args.check or [
            osp.join(ROOT, 'requirements', 'stack.txt')]))
    # After parsing: --help answers without importing torch and mmdet.
    from bdd100k_ins_seg.env import collect_env
    for key, value in collect_env().items():
        print(f'{key}: {value}')


if __name__ == '__main__':
    main()
