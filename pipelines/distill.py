"""DVC stage `distill`: HDKD, the student distilled from the trained teacher (logits + features), with
the tune stage's best distill settings applied (params.yaml as it is when `tune.enabled: false`);
with `distill.method: vanilla_kd`, Hinton's KD on the plain student network instead."""

from hdkd.stages import run

if __name__ == "__main__":
    run("distill")
