"""DVC stage `ingest`: the configured source -> data/raw (normalised PNGs + manifest)."""

from hdkd.stages import run

if __name__ == "__main__":
    run("ingest")
