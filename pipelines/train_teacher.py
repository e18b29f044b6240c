"""DVC stage `train_teacher`: train the teacher on the balanced train split, track it in MLflow."""

from hdkd.stages import run

if __name__ == "__main__":
    run("train_teacher")
