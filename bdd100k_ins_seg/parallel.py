"""Run per-file work in worker processes with a progress bar."""
from multiprocessing import Pool
from typing import Callable, Iterable, List


def map_with_progress(fn: Callable, tasks: Iterable, nproc: int = 1,
                      desc: str = '', ordered: bool = True,
                      progress: bool = True) -> List:
    """``[fn(t) for t in tasks]`` in ``nproc`` processes, with tqdm
    (unless ``progress`` is False).

    One process (or one task) runs in this process. With ``ordered=False``
    results come back in completion order.
    """
    from tqdm import tqdm
    tasks = list(tasks)
    bar = tqdm(total=len(tasks), desc=desc, disable=not progress)
    results = []
    try:
        if nproc > 1 and len(tasks) > 1:
            with Pool(min(nproc, len(tasks))) as pool:
                imap = pool.imap if ordered else pool.imap_unordered
                for result in imap(fn, tasks, chunksize=1):
                    results.append(result)
                    bar.update()
        else:
            for task in tasks:
                results.append(fn(task))
                bar.update()
    finally:
        bar.close()
    return results
