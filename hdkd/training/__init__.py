"""The training stages: the one-pass loop (`loop`), the HDKD losses, checkpoints, DDP and the stage entry (`train`)."""
