"""DVC stage `train_student`: the plain student (no distillation), the baseline HDKD must beat."""

from hdkd.stages import run

if __name__ == "__main__":
    run("train_student")
