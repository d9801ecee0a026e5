"""Error analysis on the official protocol, in numbers and pictures
(``tools/analyze.py``): the official result with the precision arrays of
its own accumulation (:mod:`.evaluate`), the confusion matrix, the
COCO-analyze error breakdown and per-image counts (:mod:`.errors`), plots
(:mod:`.plots`), a gallery of the worst and best images (:mod:`.gallery`),
the report page (:mod:`.report`), training curves from mmengine's logs
(:mod:`.logs`) and the comparison of two analyses (:mod:`.compare`).
numpy, matplotlib, Pillow/OpenCV and the official bdd100k/scalabel code;
no torch."""
