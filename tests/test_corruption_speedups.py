"""Rules the faster glass_blur and spatter paths rest on, beyond the bit-for-bit comparisons with the
references in test_glass_blur.py and test_corruptions.py.

* glass_blur: int32 node indices (int64 past 2**31 - 1 nodes) and the int8 sign test for "source visited
  earlier" (int32 past delta 7) give the makers' loop bit for bit on either side of each switch; all the
  passes of all the images are resolved together, with one convergence check (host sync) at these sizes.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_glass_blur import hwc, makers_loop
from torch.utils._python_dispatch import TorchDispatchMode

from robustkit.corruptions import blur

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class CountOps(TorchDispatchMode):
    """Counts the aten ops dispatched inside it, by name."""

    def __init__(self):
        super().__init__()
        self.calls: dict[str, int] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.__name__.split(".")[0]
        self.calls[name] = self.calls.get(name, 0) + 1
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("wide_index", [False, True])
def test_glass_shuffle_index_widths_and_wide_deltas(wide_index, monkeypatch):
    if wide_index:  # as past 2**31 - 1 nodes, without allocating them
        monkeypatch.setattr(blur, "_index_dtype", lambda count: torch.int64)
    n, h, w = 2, 40, 44
    x = torch.rand(n, 3, h, w, generator=torch.Generator().manual_seed(1))  # all pixels distinct
    for delta in (2, 7, 8):  # 7: the last delta of the int8 sign test, 8: the first in int32
        offsets = blur.glass_offsets(n, h, w, delta, 2, torch.Generator().manual_seed(delta), x.device)
        ours = hwc(blur.glass_shuffle(x, offsets, delta))
        for i in range(n):
            assert np.array_equal(ours[i], makers_loop(hwc(x)[i], offsets[i].tolist(), delta)), (delta, i)


def test_glass_shuffle_resolves_every_pass_with_one_check():
    x = torch.rand(4, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    offsets = blur.glass_offsets(4, 64, 64, 2, 3, torch.Generator().manual_seed(3), x.device)  # severity 3
    with CountOps() as ops:
        blur.glass_shuffle(x, offsets, 2)
    assert ops.calls.get("_local_scalar_dense", 0) == 1, ops.calls  # the old loop checked 2 times per pass
    assert ops.calls.get("gather", 0) == 1, ops.calls  # int64 indices only for the image itself
