"""`mlflow ui --app-name ganlab`: MLflow's own server, whose page opens experiments for model training.

MLflow 3.17's UI decides between its GenAI views and its model-training views by one switch
in the browser (localStorage `mlflow.workflowType_v1`), GenAI until someone flips it. It does
not read the experiment's kind tag, so MLflow's home page and its own "Child runs" links open
ganlab's experiments on empty trace and token-cost pages. This app is MLflow's app, with its
page served with one line in front that flips the switch to model training in a browser that
has never set it. A browser where someone chose GenAI keeps GenAI; everything else (the REST
API, artifacts, the Assistant) is MLflow's, unchanged. Registered as MLflow's `mlflow.app`
entry point `ganlab` in pyproject.toml; `ganlab.tracking.store.ui_hint` prints the command.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

APP_NAME = "ganlab"  # the name after --app-name, as pyproject.toml registers it
SWITCH_KEY = "mlflow.workflowType_v1"  # MLflow's useLocalStorage stores key `<key>_v<version>`, as JSON
MODEL_TRAINING_VIEW = "machine_learning"

SET_MODEL_TRAINING_ONCE = (
    f"<script>try{{if(localStorage.getItem({json.dumps(SWITCH_KEY)})===null)"
    f"localStorage.setItem({json.dumps(SWITCH_KEY)},{json.dumps(json.dumps(MODEL_TRAINING_VIEW))})}}"
    "catch(e){}</script>"
)


def page_for_model_training(index_html: str) -> str | None:
    """MLflow's index.html with the switch-setting line first in its head, so it runs before MLflow's
    code; None for a page without the `<head>` MLflow 3.17 writes."""
    if "<head>" not in index_html:
        return None
    return index_html.replace("<head>", "<head>" + SET_MODEL_TRAINING_ONCE, 1)


def create_app():
    """MLflow's server app with its page served through `page_for_model_training` (Flask, or FastAPI
    around it where MLflow serves with uvicorn, its default), as `mlflow ui --app-name ganlab` asks.
    Where this MLflow's page is not one ganlab knows, MLflow serves its own, and the server says so as it starts."""
    from flask import Response
    from mlflow.environment_variables import _MLFLOW_SGI_NAME
    from mlflow.server import app

    index = Path(app.static_folder) / "index.html"
    page = page_for_model_training(index.read_text(encoding="utf-8")) if index.is_file() else None
    if page is None:
        logging.getLogger(__name__).warning(
            f"ganlab: {index} is missing or has no <head>; MLflow serves its page unchanged, so its home page may open "
            "experiments on its GenAI views (ganlab's printed links still open model training)")
    else:
        app.view_functions["serve"] = lambda: Response(page, mimetype="text/html")  # MLflow's route for its page

    if _MLFLOW_SGI_NAME.get() == "uvicorn":
        from mlflow.server.fastapi_app import create_fastapi_app

        return create_fastapi_app(app)
    return app
