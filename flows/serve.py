"""Serve the deployment `hdkd/full` against the Prefect API that PREFECT_API_URL names.

python -m flows.serve        # then, elsewhere: prefect deployment run hdkd/full
"""

from flows.hdkd_flow import hdkd

if __name__ == "__main__":
    hdkd.serve(name="full", description="The whole HDKD chain: data, teacher, student, HDKD, reports, registry.")
