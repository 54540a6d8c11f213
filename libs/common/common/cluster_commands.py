"""Admin commands on clusters: the gateway validates and sends them, the clusterer runs them."""

from __future__ import annotations

import uuid
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

ClusterName = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]
# The smallest normal 32-bit float (a `real` column): 2 ** -126.
FLOAT32_MIN_NORMAL = 2.0**-126


class _Action(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Rename(_Action):
    action: Literal["rename"]
    name: ClusterName


class Merge(_Action):
    """Move the members of `source_ids` into this cluster and remove the sources."""

    action: Literal["merge"]
    source_ids: list[uuid.UUID] = Field(min_length=1, max_length=100)


class UpdateThreshold(_Action):
    """Change the similarity a newcomer needs; optionally refile members below it."""

    action: Literal["update_threshold"]
    threshold: float = Field(gt=0, le=1, allow_inf_nan=False)
    reevaluate: bool = False

    @field_validator("threshold")
    @classmethod
    def _fits_real(cls, value: float) -> float:
        # clusters.threshold is `real`: smaller values round to 0 or lose their precision.
        if value < FLOAT32_MIN_NORMAL:
            raise ValueError(
                f"a threshold below {FLOAT32_MIN_NORMAL:.6g} cannot be stored as a 32-bit float"
            )
        return value


class Confirm(_Action):
    action: Literal["confirm"]


class Reject(_Action):
    """Dissolve the cluster; its members are filed again as if they had just arrived."""

    action: Literal["reject"]


Change = Annotated[
    Rename | Merge | UpdateThreshold | Confirm | Reject, Field(discriminator="action")
]


class ClusterCommand(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    cluster_id: uuid.UUID
    actor: str = Field(min_length=1, max_length=200)
    change: Change


class ClusterCommandReply(BaseModel):
    """HTTP-like status: 200 with the cluster, or 404/409/400 with an error."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    status: int
    cluster: dict[str, Any] | None = None
    error: str | None = None
    details: dict[str, Any] | None = None


class ProposalCommand(BaseModel):
    """Accept or dismiss a re-clustering proposal."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    proposal_id: uuid.UUID
    actor: str = Field(min_length=1, max_length=200)
    decision: Literal["accept", "dismiss"]


class ReclusterCommand(BaseModel):
    """Run the re-clustering now, for one model or for every model with clusters."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    recluster: Literal["run"] = "run"
    actor: str = Field(min_length=1, max_length=200)
    model_id: str | None = Field(None, min_length=1, max_length=200)


class ModelSwitchCommand(BaseModel):
    """Flip a model switch (the next model becomes the active one), drop the old model's data
    after a flip, or cancel a switch before its flip (common/model_switch.py)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    switch: Literal["flip", "drop", "cancel"]
    actor: str = Field(min_length=1, max_length=200)


AdminRequest = ClusterCommand | ProposalCommand | ReclusterCommand | ModelSwitchCommand
