"""Speed of the model forward, post-processing, test.py and the evaluator,
each against a baseline in the same run (bdd100k_ins_seg.benchmark).

    python tools/benchmark.py CONFIG --device cpu|cuda --json OUT
                              [--repeats N] [--threads T] [--stages a,d,e]
"""
from bdd100k_ins_seg.benchmark import main

if __name__ == '__main__':
    main()
