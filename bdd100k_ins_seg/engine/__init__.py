"""Training on mmengine: atomic checkpoints and resume
(:mod:`.checkpoints`), signals and non-finite losses (:mod:`.faults`),
exactly resumable loops and samplers (:mod:`.loops`), the runner set-up
(:mod:`.training`, :mod:`.runners`: the console kept short), the inputs
checked before the runner (:mod:`.inputs`), the schedule scaling hook
(:mod:`.schedule`), CPU threads (:mod:`.threads`) and distributed start-up
(:mod:`.launch`)."""
