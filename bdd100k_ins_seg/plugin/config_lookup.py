"""Faster ``mmdet::_base_/...`` config inheritance (a pure speed-up)."""


def install_base_config_lookup():
    """Resolve ``mmdet::_base_/...`` without reading mmdet's metafiles.

    For every ``package::path`` base, mmengine first searches the package's
    ~100 metafiles for ``path`` (about 1 s of YAML parsing, repeated for each
    base of each config) and only then falls back to
    ``.mim/configs/<path>``. ``_base_`` configs are never in a metafile, so
    this goes straight to the fallback for them; other paths keep mmengine's
    lookup. Importing ``bdd100k_ins_seg`` calls it.
    """
    from mmengine.config import config as config_module
    lookup = config_module._get_external_cfg_path
    if getattr(lookup, 'skips_base_configs', False):
        return

    def external_cfg_path(package_path, cfg_file):
        if cfg_file.startswith('_base_/'):
            # mmengine's own answer for a path that no metafile lists.
            raise ValueError(f'{cfg_file} is a base config')
        return lookup(package_path, cfg_file)

    external_cfg_path.skips_base_configs = True
    config_module._get_external_cfg_path = external_cfg_path
