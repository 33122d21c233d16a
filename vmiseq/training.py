"""Deprecated: the safe checkpoint loading moved to :mod:`vmiseq.checkpoints` (this name is an
alias of it and warns on import); the experiments' own helpers (flags, Trainer, callbacks,
``run_script``) moved beside the scripts, to ``experiments/harness/``."""
from ._moved import alias

alias(__name__, "vmiseq.checkpoints", "load_checkpoint, load_module_from_checkpoint, SafeCheckpointIO; "
      "the experiment helpers moved to experiments/harness/")
