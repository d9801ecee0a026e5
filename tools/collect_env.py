"""Print versions, devices and the active mmcv ops backend.

    python tools/collect_env.py

Paste its output into every bug report.
"""
import argparse


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split('\n')[0],
        epilog='Paste its output into every bug report.')
    return parser.parse_args(argv)


def main(argv=None):
    parse_args(argv)
    # After parsing: --help answers without importing torch and mmdet.
    from bdd100k_ins_seg.env import collect_env
    for key, value in collect_env().items():
        print(f'{key}: {value}')


if __name__ == '__main__':
    main()
