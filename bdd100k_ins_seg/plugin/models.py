"""Models built from a config, with this package registered (importing
:mod:`bdd100k_ins_seg.plugin` does it)."""


def count_parameters(config_path):
    """Number of parameters of the model a config builds (nothing loaded).

    The catalogue checks it against the metafile (``tools/model_zoo.py list
    --params``).
    """
    from mmdet.registry import MODELS
    from mmengine.config import Config
    from mmengine.registry import init_default_scope
    cfg = Config.fromfile(config_path)
    init_default_scope(cfg.get('default_scope', 'mmdet'))
    model = MODELS.build(cfg.model)  # weights stay uninitialised: no I/O
    return sum(p.numel() for p in model.parameters())
