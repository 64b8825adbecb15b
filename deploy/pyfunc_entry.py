"""The file MLflow loads the registered model from ("models from code": no pickled Python object).

Only MLflow executes this file, when it logs or loads a model; nothing in weakflow imports it.
"""

import mlflow

from deploy.model import WeakflowClassifier

mlflow.models.set_model(WeakflowClassifier())
