"""The test path, model output to files: pre-flight checks and the resume
manifest (:mod:`.preflight`), one run per output folder
(:mod:`.folder_lock`), the box-local mask paste (:mod:`.paste`), the
background bitmask writer (:mod:`.writer`), and the inference speed-ups
(:mod:`.optimize`: BatchNorm folding, channels-last; :mod:`.fast_conv`:
Winograd and oneDNN convolutions)."""
