"""Models-from-code entry of the student pyfunc: MLflow copies this file into the logged model and runs
it on load (no pickle). The logic lives in `hdkd.deploy.serving`; this file only names the model object."""

from mlflow.models import set_model

from hdkd.deploy.serving import StudentPyfunc

set_model(StudentPyfunc())
