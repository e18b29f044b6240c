"""Serve the deployments `hdkd/full` and `hdkd/ablation` against the Prefect API that PREFECT_API_URL names.

python -m flows.serve        # then, elsewhere: prefect deployment run hdkd/full (or hdkd/ablation)

Each deployment runs at most one flow run at a time; further runs wait in the queue, so two runs
never write params.yaml or take DVC's locks at once.
"""

from typing import Any, cast

from prefect import serve
from prefect.deployments.runner import RunnerDeployment

from flows.hdkd_flow import hdkd


def deployment(**options: Any) -> RunnerDeployment:
    # `to_deployment` also returns a coroutine when called from async code; here it is sync.
    return cast(RunnerDeployment, hdkd.to_deployment(concurrency_limit=1, **options))


if __name__ == "__main__":
    serve(
        deployment(
            name="full",
            description="The whole HDKD chain: data, teacher, student, HDKD, reports, registry.",
        ),
        deployment(
            name="ablation",
            description="Seeds x distillation settings as queued DVC experiments: reports/ablation.md.",
            parameters={"ablate": True},
        ),
    )
