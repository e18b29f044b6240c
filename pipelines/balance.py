"""DVC stage `balance`: SMOTE on the train split, class by class -> data/balanced."""

from hdkd.stages import run

if __name__ == "__main__":
    run("balance")
