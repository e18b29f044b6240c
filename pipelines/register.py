"""DVC stage `register`: the trained networks into MLflow's model registry, with aliases."""

from hdkd.stages import run

if __name__ == "__main__":
    run("register")
