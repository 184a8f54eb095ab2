"""Models-from-code entry point that MLflow executes to build the pyfunc model."""

from mlflow.models import set_model

from training.pyfunc import LeadScoringPyfunc

set_model(LeadScoringPyfunc())
