"""The three networks of a run and their name in each tool: the project's one vocabulary.

| kind        | params section | DVC stage       | registered model        | label                  |
|-------------|----------------|-----------------|-------------------------|------------------------|
| `teacher`   | `teacher`      | `train_teacher` | `hdkd-teacher`          | Teacher (CNN)          |
| `student`   | `student`      | `train_student` | `hdkd-student-baseline` | Plain student (no KD)  |
| `distilled` | `distill`      | `distill`       | `hdkd-student`          | HDKD student           |

`hdkd-student` is the distilled network because it is the one the project ships and serves; the
plain student is its baseline. Nothing here imports torch, so the CLI can use it cheaply.

How the `distilled` network is distilled is a setting of its section, not a kind: `distill.method: hdkd`
(the default) or `vanilla_kd` (Hinton's KD on the plain student network, the reference of `hdkd ablate`).
Both are the same place in the stage graph (trained from the teacher, evaluated against the plain student,
registered and served as `hdkd-student`), so a method is an experiment (`dvc exp run -S distill.method=...`)
rather than a fourth network every `dvc repro` would train.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Network:
    kind: str
    section: str
    stage: str
    registered_name: str
    label: str


NETWORKS = {
    network.kind: network
    for network in (
        Network("teacher", "teacher", "train_teacher", "hdkd-teacher", "Teacher (CNN)"),
        Network("student", "student", "train_student", "hdkd-student-baseline", "Plain student (no KD)"),
        Network("distilled", "distill", "distill", "hdkd-student", "HDKD student"),
    )
}
KINDS = tuple(NETWORKS)  # teacher first: students are compared with it


def label(kind: str) -> str:
    return NETWORKS[kind].label if kind in NETWORKS else kind
