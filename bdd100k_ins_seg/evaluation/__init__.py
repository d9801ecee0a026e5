"""The official protocol: the bitmask evaluator (:mod:`.bitmask_eval`, the
official ``BDD100KInsSegEval`` fed faster) and the evaluator's result file
(:mod:`.results`). No torch, no mmdet; the CLI is
``python -m bdd100k_ins_seg.eval``."""
