"""Drawing predictions: the palette, colorized bitmasks and overlays on
images (:mod:`.overlay`). numpy and OpenCV only."""
