"""The file MLflow loads the registered model from ("models from code": no pickled Python object).

Only MLflow executes this file, when it logs or loads a model; nothing in weakflow imports it.
"""

import mlflow

from weakflow.deploy.model import WeakflowClassifier  # from the model's own code (deploy/model_code.py)

mlflow.models.set_model(WeakflowClassifier())
