"""A Lightning callback of the user's own."""

from __future__ import annotations

import lightning as L

#: (hook, trainer.gradient_clip_val, trainer.precision, dtype of the first parameter)
SEEN: list[tuple[str, float | None, str, str]] = []


class Recorder(L.Callback):
    """Records what the Trainer it runs in was configured with."""

    def on_train_start(self, trainer, pl_module):
        SEEN.append(("on_train_start", trainer.gradient_clip_val, trainer.precision,
                     str(next(pl_module.parameters()).dtype)))

    def on_validation_end(self, trainer, pl_module):
        SEEN.append(("on_validation_end", trainer.gradient_clip_val, trainer.precision,
                     str(next(pl_module.parameters()).dtype)))
