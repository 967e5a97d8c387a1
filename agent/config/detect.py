"""The detection stage's sections: the model package, frames kept for labelling, food zones."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field

from agent.config.base import ConfigModel, Duration


class ModelConfig(ConfigModel):
    """The detection model package and how to run it."""

    path: Path = Field(default=Path("models/default"), description="model package directory")
    backend: Literal["onnxruntime", "openvino"] = Field(
        default="onnxruntime", description="inference backend"
    )
    precision: str = Field(
        default="auto",
        pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$",
        description=(
            "which variant of the detector to run: auto (the package's default_variant),"
            " fp32 (its main file) or a variant it lists, such as int8"
        ),
    )
    threads: int = Field(default=1, ge=1, le=64, description="intra-op threads for inference")
    workers: Annotated[int, Field(ge=1, le=16)] | Literal["auto"] = Field(
        default="auto",
        description=(
            "detectors that share a loaded turn's frames, each with its own sessions and"
            " `threads` intra-op threads; auto: the usable cores / threads, at most 4"
        ),
    )
    conf_threshold: float = Field(
        default=0.25, ge=0.01, le=1, description="detections below this are discarded"
    )
    iou_threshold: float = Field(default=0.45, ge=0.05, le=1, description="NMS IoU threshold")
    max_slowdown: float = Field(
        default=4.0,
        ge=1,
        le=20,
        description=(
            "when inference cannot keep up, every camera's detect_interval is stretched"
            " together up to this factor (counted in the heartbeat) instead of dropping"
            " frames at random"
        ),
    )


class CaptureConfig(ConfigModel):
    """Frames kept with the model's detections as YOLO labels, to label and improve the model.

    The frames show children and staff: personal data. Turn this on only where the school's
    consent and data policy allow it.
    """

    enabled: bool = Field(
        default=False, description="keep sample frames (personal data: the school's policy rules)"
    )
    uncertain_band: float = Field(
        default=0.15,
        ge=0,
        le=1,
        description="keep a frame when a detection's confidence is within this of its threshold",
    )
    random_rate: float = Field(
        default=0.001, ge=0, le=1, description="share of analysed frames kept at random"
    )
    max_mb: float = Field(
        default=500.0, ge=1, le=10_000_000, description="size cap (MB); the oldest frames go first"
    )
    min_interval: Duration = Field(
        default=30.0, ge=0, le=86400, description="at most one frame per camera this often"
    )
    directory: Path | None = Field(
        default=None, description="where the frames go; unset: <storage.state_dir>/capture"
    )


class FoodConfig(ConfigModel):
    """Food zones (防尘防蝇): each zone's state classified against the installer's references."""

    check_interval: Duration = Field(
        default=5.0, ge=0.5, le=3600, description="seconds between two checks of a food zone"
    )
    unknown_distance: float = Field(
        default=1.0,
        gt=0,
        le=100,
        description="farther than this times the references' own state-to-state distance from "
        "every reference: unknown (something covers the zone, or the scene changed)",
    )
    occlusion_overlap: float = Field(
        default=0.2,
        ge=0,
        le=1,
        description="a person, face or head detection over more than this share of a food zone: "
        "unknown (the zone cannot be seen)",
    )
    references_per_state: int = Field(
        default=50,
        ge=1,
        le=1000,
        description="references kept per camera, zone and state; the oldest go first",
    )
