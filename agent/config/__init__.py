"""The agent's configuration: one YAML file validated by pydantic models, loaded once.

Unknown keys are rejected, every field has limits and a description, and every error
names the file, the line and the YAML path, for example
``agent.yaml:42 cameras.kitchen-1.detect_interval: must be >= 0.1 s``.
Secrets never live in the YAML: a field of type :class:`SecretRef` names an environment
variable, a systemd credential or a file that holds the value.

One model per YAML section, in the module of the stage it configures: ``base`` (the strict
base model, ids, durations, secret references), ``cameras`` (stream, picture, zones, view,
gating), ``detect`` (model, capture, food), ``rules`` (rules and schedules), ``alarm``, ``web``
(the local installer page), and
``models`` (identity, MQTT, storage, evidence, heartbeat, logging and the root
:class:`AgentConfig`); ``loader`` reads and validates the file. Import from here.
"""

from agent.config.alarm import AlarmConfig, BeepConfig, BeepsConfig, SounderConfig
from agent.config.base import (
    DEFAULT_CREDENTIALS_DIR,
    ID_PATTERN,
    Duration,
    SecretRef,
    credentials_directory,
    parse_duration,
)
from agent.config.cameras import (
    CameraConfig,
    CameraRuleConfig,
    GatingConfig,
    PictureConfig,
    Point,
    ViewConfig,
    ZoneConfig,
)
from agent.config.detect import CaptureConfig, FoodConfig, ModelConfig
from agent.config.loader import (
    check_secrets,
    describe_validation,
    load_config,
    parse_config,
    redacted_dict,
    with_base_dir,
)
from agent.config.models import (
    AgentConfig,
    CameraId,
    EvidenceConfig,
    HeartbeatConfig,
    IdentityConfig,
    LoggingConfig,
    MqttConfig,
    StorageConfig,
    TlsConfig,
)
from agent.config.rules import FOOD_ZONES, Consensus, RuleConfig, ScheduleWindow
from agent.config.web import WEB_PASSWORD_CREDENTIAL, WebConfig, WebTlsConfig, split_listen

__all__ = [
    "DEFAULT_CREDENTIALS_DIR",
    "FOOD_ZONES",
    "ID_PATTERN",
    "WEB_PASSWORD_CREDENTIAL",
    "AgentConfig",
    "AlarmConfig",
    "BeepConfig",
    "BeepsConfig",
    "CameraConfig",
    "CameraId",
    "CameraRuleConfig",
    "CaptureConfig",
    "Consensus",
    "Duration",
    "EvidenceConfig",
    "FoodConfig",
    "GatingConfig",
    "HeartbeatConfig",
    "IdentityConfig",
    "LoggingConfig",
    "ModelConfig",
    "MqttConfig",
    "PictureConfig",
    "Point",
    "RuleConfig",
    "ScheduleWindow",
    "SecretRef",
    "SounderConfig",
    "StorageConfig",
    "TlsConfig",
    "ViewConfig",
    "WebConfig",
    "WebTlsConfig",
    "ZoneConfig",
    "check_secrets",
    "credentials_directory",
    "describe_validation",
    "load_config",
    "parse_config",
    "parse_duration",
    "redacted_dict",
    "split_listen",
    "with_base_dir",
]
