"""DataLoader workers (mdr.data.loading.worker_start_method) fork from a forkserver that has imported the data
modules once, instead of each importing torch and torchvision to unpickle its dataset."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from torch.utils.data import Dataset

ROOT = Path(__file__).resolve().parents[2]

PROBE = """
from torch.utils.data import DataLoader
from mdr.data.loading import worker_start_method
from tests.data.test_loading import Probe

loader = DataLoader(Probe(), batch_size=None, num_workers=2, multiprocessing_context=worker_start_method())
print(sorted(set(loader)))
"""


class Probe(Dataset):
    """Says whether a worker had torchvision's transforms imported before this dataset arrived in it."""

    def __len__(self) -> int:
        return 2

    def __getstate__(self) -> dict:
        return {"sent": True}  # not empty: pickle calls __setstate__ only for a true state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, found="torchvision.transforms.v2" in sys.modules)

    def __getitem__(self, i: int) -> bool:
        return self.found


def test_workers_start_with_the_data_modules_imported():
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split("\n")[-2] == "[True]"  # both workers
