"""DVC stage `split`: data/raw -> data/split (stratified, grouped train/val/test + decoded caches)."""

from hdkd.stages import run

if __name__ == "__main__":
    run("split")
