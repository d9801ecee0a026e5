"""Process-group start-up shared by train.py and test.py."""
import os
import subprocess


def init_cpu_distributed(launcher, backend='gloo'):
    """Start the process group on a machine without CUDA.

    mmengine's launchers call ``torch.cuda.set_device`` (which fails without
    GPUs); the Runner skips its own start-up when a group already exists.
    ``launcher`` is 'pytorch' (torchrun / torch.distributed.launch set RANK,
    WORLD_SIZE, MASTER_ADDR, MASTER_PORT) or 'slurm' (read from SLURM_*).
    """
    import torch.distributed as dist
    if dist.is_initialized():
        return
    if launcher == 'slurm':
        os.environ.setdefault('RANK', os.environ['SLURM_PROCID'])
        os.environ.setdefault('WORLD_SIZE', os.environ['SLURM_NTASKS'])
        os.environ['LOCAL_RANK'] = os.environ.get('SLURM_LOCALID', '0')
        os.environ.setdefault('MASTER_PORT', '29500')
        if 'MASTER_ADDR' not in os.environ:
            nodes = os.environ['SLURM_NODELIST']
            os.environ['MASTER_ADDR'] = subprocess.getoutput(
                f'scontrol show hostname {nodes} | head -n1')
    dist.init_process_group(backend=backend)
