"""DVC stage `validate`: Great Expectations suite over data/raw; Data Docs under reports/."""

from hdkd.stages import run

if __name__ == "__main__":
    run("validate")
