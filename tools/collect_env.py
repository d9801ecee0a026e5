"""Print versions, devices and the active mmcv ops backend.

    python tools/collect_env.py
"""
import warnings

warnings.filterwarnings('ignore', message='pkg_resources is deprecated')

from bdd100k_ins_seg.env import collect_env  # noqa: E402


def main():
    for key, value in collect_env().items():
        print(f'{key}: {value}')


if __name__ == '__main__':
    main()
