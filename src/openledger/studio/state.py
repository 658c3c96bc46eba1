"""What one running Studio holds: its settings, folder, training jobs, engine and rewards."""

from __future__ import annotations

from dataclasses import dataclass

from openledger.studio.attributions import Attributions
from openledger.studio.chat import ChatEngines
from openledger.studio.config import StudioConfig
from openledger.studio.evaluations import Evaluations
from openledger.studio.jobs import TrainingJobs
from openledger.studio.rewards import Rewards
from openledger.studio.workspace import Workspace

__all__ = ["StudioState"]


@dataclass
class StudioState:
    """The Studio's state, shared by every request (``app.state.studio``)."""

    config: StudioConfig
    workspace: Workspace
    jobs: TrainingJobs
    chat: ChatEngines
    rewards: Rewards
    evaluations: Evaluations
    attributions: Attributions

    @classmethod
    def from_config(cls, config: StudioConfig) -> StudioState:
        """Open (or create) the home folder and build empty state around it."""
        workspace = Workspace(config.home)
        rewards = Rewards(config.home / "rewards", config.chain_url)
        return cls(
            config,
            workspace,
            TrainingJobs(workspace, rewards.register_model, rewards.note_model),
            ChatEngines(workspace),
            rewards,
            Evaluations(workspace),
            Attributions(workspace, rewards),
        )
