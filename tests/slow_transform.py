"""A pipeline step that waits, so a test can stop test.py mid-run."""
import time

from mmcv.transforms import BaseTransform

from mmdet.registry import TRANSFORMS


@TRANSFORMS.register_module()
class WaitForTest(BaseTransform):

    def __init__(self, seconds=0.2):
        self.seconds = seconds

    def transform(self, results):
        time.sleep(self.seconds)
        return results
