"""The MLflow pyfunc wrapper a registered policy version is logged as.

The registered model's one real artifact is the exported `.npz` (`artifacts/<name>.npz`); this
wrapper lets `mlflow.pyfunc.load_model("models:/piece-selector@production").predict(df)` run
it (a DataFrame with the feature columns in, the model's raw output out: predicted log
seconds per MiB, or the business-traffic quantile). Nodes do not use it: they read the `.npz`
directly (`models.learned.registry.fetch_npz`) and never import mlflow's model machinery.
"""
from __future__ import annotations

import mlflow.pyfunc
import numpy as np
import pandas as pd

from .export import load_mlp


class NpzPolicyModel(mlflow.pyfunc.PythonModel):
    def load_context(self, context):
        self.mlp = load_mlp(context.artifacts["npz"])

    def predict(self, context, model_input: pd.DataFrame, params=None) -> np.ndarray:
        names = list(self.mlp.feature_names)
        if hasattr(model_input, "columns"):
            x = model_input[names].to_numpy(dtype=np.float64)
        else:
            x = np.asarray(model_input, dtype=np.float64)
        return self.mlp.forward(x)
