"""DVC stage `evaluate`: teacher, plain student and HDKD student on the untouched test split."""

from hdkd.stages import run

if __name__ == "__main__":
    run("evaluate")
