"""The Train and Evaluate tabs' API: base models, presets with help text, start,
progress, cancel; an adapter evaluated against its base model."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field

from openledger.studio.jobs import TrainingRequest
from openledger.studio.state import StudioState

__all__ = ["FIELDS", "PRESETS", "router"]

router = APIRouter(prefix="/api")

FIELDS = (
    "r",
    "alpha",
    "dropout",
    "target_modules",
    "learning_rate",
    "epochs",
    "max_steps",
    "batch_size",
    "max_length",
    "use_rslora",
    "use_dora",
    "seed",
)
"""Recipe fields the form shows (help text comes from :class:`openledger.train.LoraRecipe`)."""

PRESETS: dict[str, dict[str, Any]] = {
    "quick look": {
        "r": 4,
        "alpha": 8,
        "dropout": 0.0,
        "target_modules": "q_proj,v_proj",
        "learning_rate": 1e-2,
        "epochs": 1,
        "max_steps": 20,
        "batch_size": 4,
        "max_length": 128,
    },
    "balanced": {
        "r": 8,
        "alpha": 16,
        "dropout": 0.05,
        "target_modules": "all-linear",
        "learning_rate": 2e-4,
        "epochs": 2,
        "max_steps": None,
        "batch_size": 4,
        "max_length": 512,
    },
    "thorough": {
        "r": 16,
        "alpha": 32,
        "dropout": 0.05,
        "target_modules": "all-linear",
        "learning_rate": 1e-4,
        "epochs": 3,
        "max_steps": None,
        "batch_size": 8,
        "max_length": 1024,
        "use_rslora": True,
    },
}
"""Starting points for the hyperparameter form."""


class StartTraining(BaseModel):
    """Body of ``POST /api/train``: adapter name, data, base model and recipe fields."""

    name: str
    datanet: str
    snapshot_id: int
    base_model: str
    recipe: dict[str, Any] = {}
    registrant: str | None = None
    """A local account that registers the adapter on the chain (default: the chain's own)."""


def _state(request: Request) -> StudioState:
    state: StudioState = request.app.state.studio
    return state


@router.get("/train/options")
def training_options(request: Request) -> dict[str, Any]:
    """Base models, presets, and each shown recipe field's default and help text."""
    from openledger.train import LoraRecipe

    fields = {}
    for name in FIELDS:
        info = LoraRecipe.model_fields[name]
        default = info.default if not isinstance(info.default, tuple) else ",".join(info.default)
        fields[name] = {"default": default, "help": info.description or ""}
    return {
        "base_models": _state(request).workspace.base_models(),
        "presets": PRESETS,
        "fields": fields,
    }


@router.post("/train")
def start_training(body: StartTraining, request: Request) -> dict[str, Any]:
    """Start a training run in the background; returns the job."""
    recipe = {k: v for k, v in body.recipe.items() if v is not None and v != ""}
    modules = recipe.get("target_modules")
    if isinstance(modules, str) and modules != "all-linear":
        recipe["target_modules"] = [m.strip() for m in modules.split(",") if m.strip()]
    recipe["base_model"] = body.base_model
    request_ = TrainingRequest(
        body.name, body.datanet, body.snapshot_id, recipe, body.registrant or None
    )
    return _state(request).jobs.start(request_).to_dict()


@router.get("/train/jobs")
def list_jobs(request: Request) -> list[dict[str, Any]]:
    """Every job of this Studio session, newest first."""
    jobs = _state(request).jobs.jobs.values()
    return [job.to_dict() for job in sorted(jobs, key=lambda j: -j.started_at)]


@router.get("/train/jobs/{job_id}")
def get_job(job_id: str, request: Request) -> dict[str, Any]:
    """A job's state, steps, losses and logs (the page polls this)."""
    return _state(request).jobs.get(job_id).to_dict()


@router.post("/train/jobs/{job_id}/cancel")
def cancel_job(job_id: str, request: Request) -> dict[str, Any]:
    """Cancel a job; it stops at its next step and keeps nothing."""
    return _state(request).jobs.cancel(job_id).to_dict()


class StartEvaluation(BaseModel):
    """Body of ``POST /api/evaluate``: which adapter, on which snapshot."""

    adapter: str
    datanet: str
    snapshot_id: int
    num_generate: int = Field(default=8, ge=0, le=64)
    reader: str | None = None
    """The local account whose approved access reads a private datanet."""


@router.post("/evaluate")
def start_evaluation(body: StartEvaluation, request: Request) -> dict[str, Any]:
    """Evaluate an adapter against its base model on a snapshot, in the background."""
    evaluations = _state(request).evaluations
    job = evaluations.start(
        body.adapter, body.datanet, body.snapshot_id, body.num_generate, body.reader or None
    )
    return job.to_dict()


@router.get("/evaluate/{job_id}")
def get_evaluation(job_id: str, request: Request) -> dict[str, Any]:
    """An evaluation's state and, once done, its scores and sample answers."""
    return _state(request).evaluations.get(job_id).to_dict()


@router.get("/adapters")
def list_adapters(request: Request) -> list[dict[str, Any]]:
    """Finished adapters with their base model, data, final loss and on-chain model id."""
    workspace = _state(request).workspace
    models = _state(request).rewards.models()
    rows = []
    for name in workspace.adapter_names():
        manifest = workspace.adapter(name).manifest
        rows.append(
            {
                "model": models.get(name),
                "name": name,
                "id": manifest.adapter_id,
                "base_model": manifest.base_model,
                "snapshot_root": manifest.snapshot_root,
                "steps": manifest.num_steps,
                "train_loss": manifest.metrics.get("train_loss"),
            }
        )
    return rows
