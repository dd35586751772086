"""The image cache's progress bar advances as each chunk of images is cached, not only at the end."""
from __future__ import annotations

import threading

import numpy as np
import pandas as pd

from mdr.data import imagecache


class RecordingBar:
    """Stands in for tqdm: records how many images had been loaded at each update."""

    def __init__(self, loaded, first_update, **kwargs):
        self.loaded, self.first_update, self.seen = loaded, first_update, []

    def update(self, n):
        self.seen.append((n, self.loaded[0]))
        self.first_update.set()

    def close(self):
        pass


def test_bar_advances_per_chunk(tmp_path, monkeypatch):
    import tqdm.auto

    n = 3 * imagecache.CHUNK
    loaded, first_update, bars = [0], threading.Event(), []
    lock = threading.Lock()

    def bar(**kwargs):
        bars.append(RecordingBar(loaded, first_update))
        return bars[-1]

    monkeypatch.setattr(tqdm.auto, "tqdm", bar)

    def loader(i):
        if i == imagecache.CHUNK:  # the second chunk starts only once the bar has shown the first
            first_update.wait(timeout=5)
        with lock:
            loaded[0] += 1
        return np.full((4, 4, 3), i % 256, np.uint8)

    rows = pd.DataFrame({"path": [f"x/{i}" for i in range(n)], "class_id": [i % 3 for i in range(n)],
                         "class_name": "c", "split": "train"})
    ds = imagecache.build_prepared("bar", rows, tmp_path / "out", 4, loader=loader, workers=1)
    seen = bars[0].seen
    assert [step for step, _ in seen] == [imagecache.CHUNK] * 3
    assert seen[0][1] == imagecache.CHUNK  # shown when the first chunk was done, before any other image loaded
    assert ds.images()[n - 1, 0, 0, 0] == (n - 1) % 256
