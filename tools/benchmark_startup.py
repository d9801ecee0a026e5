"""Time each entry point's --help against a bare Python start, medians.

    python tools/benchmark_startup.py [--repeat 5] [--root DIR]

Every root *.py, tools/*.py and tools/*.sh of DIR (default: this checkout)
is run with --help REPEAT times, one after another, as is
``python -c pass``; prints the median wall time of each and its ratio to
the bare start. --help should answer in about as long as Python takes to
start: the scripts import torch, mmengine and mmdet after parsing.
"""
import argparse
import os
import os.path as osp
import statistics
import subprocess
import sys
import time

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--repeat', type=int, default=5,
                        help='runs per command (default 5)')
    parser.add_argument('--root', default=ROOT,
                        help='checkout to measure (default: this one)')
    args = parser.parse_args()
    if args.repeat < 1:
        parser.error(f'--repeat: {args.repeat} is not a positive number')
    if not osp.isdir(osp.join(args.root, 'tools')):
        parser.error(f'--root: {args.root} has no tools/ folder')
    return args


def entry_points(root):
    found = [n for n in os.listdir(root)
             if n.endswith('.py') and not n.startswith('_')
             and n not in ('setup.py', 'conftest.py')]
    found += [osp.join('tools', n) for n in os.listdir(osp.join(root, 'tools'))
              if n.endswith(('.py', '.sh')) and not n.startswith('_')]
    return sorted(found)


def median_seconds(cmd, root, repeat):
    env = dict(os.environ, PYTHONPATH=root)
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        subprocess.run(cmd, cwd=root, env=env, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, check=False)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main():
    args = parse_args()
    root = osp.abspath(args.root)
    base = median_seconds([sys.executable, '-c', 'pass'], root, args.repeat)
    print(f'median of {args.repeat} runs, {root}')
    print(f'{"command":34s}{"s":>8s}{"x python":>10s}')
    print(f'{"python -c pass":34s}{base:8.2f}{1:10.1f}')
    for script in entry_points(root):
        cmd = ([osp.join(root, script)] if script.endswith('.sh') else
               [sys.executable, osp.join(root, script)]) + ['--help']
        t = median_seconds(cmd, root, args.repeat)
        print(f'{script + " --help":34s}{t:8.2f}{t / base:10.1f}',
              flush=True)


if __name__ == '__main__':
    main()
