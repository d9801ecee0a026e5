"""The official evaluator's result file.

What ``python -m bdd100k.eval.run -t ins_seg ... --out-file F`` (or
``test.py --eval --out-file F``) writes: a json object mapping each metric
(AP, AP50, AP75, APs, ..., AR100, ...) to ``[{class: value}, {"OVERALL":
value}]``, x100, NaN for a class without GT. The published
``scores-val``/``scores-test`` files of the zoo have the same layout.
:func:`load_result` reads and checks one.
"""
import json
import math
from typing import Dict, Tuple

#: The columns of the comparison.
METRICS = ('AP', 'AP50', 'AP75', 'AR100')
#: The evaluator's metrics, in its order (the published table shows them).
ALL_METRICS = ('AP', 'AP50', 'AP75', 'APs', 'APm', 'APl', 'AR1', 'AR10',
               'AR100', 'ARs', 'ARm', 'ARl')
#: Rows whose |delta AP| exceeds this are flagged.
FLAG_AP = 0.5
OVERALL = 'OVERALL'

#: metric -> (per-class values, OVERALL value)
Result = Dict[str, Tuple[Dict[str, float], float]]


class ResultFormatError(ValueError):
    """A file that is not in the evaluator's result layout (one line)."""


def _number(value, where, source):
    if value is None:  # NaN written by a strict json encoder
        return math.nan
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ResultFormatError(f'{source}: {where} is {value!r}, not a '
                                'number')
    return float(value)


def parse_result(data, source='result'):
    """Check and convert the evaluator's result layout.

    Args:
        data: the json object.
        source (str): named in errors.

    Returns:
        dict: metric -> (dict class -> value, OVERALL value), NaN kept.

    Raises:
        ResultFormatError: naming the first thing that is wrong.
    """
    if not isinstance(data, dict):
        raise ResultFormatError(
            f'{source}: not an official evaluator result (a json object '
            f'mapping metrics to [per-class, {{"OVERALL": x}}]), but a '
            f'{type(data).__name__}')
    missing = [m for m in METRICS if m not in data]
    if missing:
        raise ResultFormatError(
            f'{source}: not an official evaluator result: no '
            f'{", ".join(missing)} '
            f'(has {", ".join(map(str, data)) or "none"})')
    result = {}
    for metric, value in data.items():
        if not (isinstance(value, list) and len(value) == 2
                and all(isinstance(v, dict) for v in value)
                and OVERALL in value[1]):
            raise ResultFormatError(
                f'{source}: {metric} is not [per-class dict, '
                f'{{"OVERALL": x}}]')
        classes = {str(k): _number(v, f'{metric}/{k}', source)
                   for k, v in value[0].items()}
        result[metric] = (classes, _number(value[1][OVERALL],
                                           f'{metric}/{OVERALL}', source))
    return result


def load_result(path):
    """:func:`parse_result` of a json file (errors name the file)."""
    try:
        with open(path, encoding='utf-8') as f:
            data = json.load(f)
    except OSError as e:
        raise ResultFormatError(f'{path}: cannot read it: '
                                f'{e.strerror or e}') from None
    except ValueError as e:  # json and unicode errors
        raise ResultFormatError(f'{path}: not valid json ({e})') from None
    return parse_result(data, source=str(path))
