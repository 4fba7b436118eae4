"""``robustkit`` whose rank 1 dies without a word (``os._exit``, as an out-of-memory kill would) in training
step 3: tests/test_ddp_train.py checks that the other rank ends too, with the resume command, not a hang."""

import os

from robustkit.cli import main
from robustkit.methods import TRAIN_STEPS

if os.environ.get("RANK") == "1":
    _step = TRAIN_STEPS["baseline"]

    def _dies_at_step_3(model, batch, *args, **kwargs):
        if batch.step == 2:
            os._exit(3)
        return _step(model, batch, *args, **kwargs)

    TRAIN_STEPS["baseline"] = _dies_at_step_3

main()
