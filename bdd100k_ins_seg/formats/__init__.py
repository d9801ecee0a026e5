"""The BDD100K files: bitmask PNGs and ``score.json`` (:mod:`.bitmask`),
image-file checks (:mod:`.images`), label conversions through the official
toolkit (:mod:`.labels`) and the synthetic sample dataset
(:mod:`.sample_data`). numpy, Pillow and the official ``bdd100k``/
``scalabel`` code only: no torch, no mmdet."""
