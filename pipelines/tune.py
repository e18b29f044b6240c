"""DVC stage `tune`: the Optuna study over the distillation hyper-parameters (before `distill`)."""

from hdkd.stages import run

if __name__ == "__main__":
    run("tune")
