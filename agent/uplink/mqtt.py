"""The one place a paho-mqtt client is built from ``mqtt:`` settings.

The uplink (:class:`agent.uplink.client.Uplink`) and the installer's broker check
(``mclz-agent check``) both take their client from :func:`build_client`, so the check
connects exactly as the agent would: same protocol version, user, password and TLS
(CA, mutual TLS, ``insecure``). What happens after that (last will, reconnect delays,
in-flight window, callbacks) is the caller's.
"""

from __future__ import annotations

import logging
import ssl

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from agent.config import MqttConfig
from agent.errors import SecretError, UplinkError


class _NotConnectedFilter(logging.Filter):
    """Drops paho 2.2's "Client is not connected" ERROR, logged about once a second while it
    waits to reconnect and once after a clean DISCONNECT: the uplink reports the link's
    state itself (disconnected, refused, cannot reach), once per change."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Client is not connected")


def build_client(
    cfg: MqttConfig,
    client_id: str,
    *,
    keep_session: bool = True,
    logger: logging.Logger | None = None,
) -> mqtt.Client:
    """A paho 2.x client (callback API 2) set up from ``cfg``; nothing connects yet.

    ``keep_session`` asks the broker to keep the session across connections: under MQTT
    3.1.1 that is ``clean_session=False`` here; under MQTT 5 the caller asks for it when it
    connects (``clean_start`` and a session expiry). ``logger`` receives paho's own log,
    without its once-a-second "Client is not connected" noise.

    Raises:
        SecretError: the password cannot be resolved, or it is set without a user name.
        UplinkError: the TLS files cannot be loaded (the message names ``mqtt.tls``).
    """
    v5 = cfg.protocol == "5"
    client = mqtt.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
        clean_session=None if v5 else not keep_session,
        reconnect_on_failure=True,
    )
    if logger is not None:
        if not any(isinstance(f, _NotConnectedFilter) for f in logger.filters):
            logger.addFilter(_NotConnectedFilter())
        client.enable_logger(logger)
    if cfg.username:
        password = cfg.password.resolve("mqtt.password") if cfg.password is not None else None
        client.username_pw_set(cfg.username, password)
    elif cfg.password is not None:
        raise SecretError("mqtt.password is set but mqtt.username is empty")
    if cfg.use_tls:
        tls = cfg.tls
        try:
            client.tls_set(
                ca_certs=str(tls.ca_file) if tls.ca_file else None,
                certfile=str(tls.cert_file) if tls.cert_file else None,
                keyfile=str(tls.key_file) if tls.key_file else None,
                cert_reqs=ssl.CERT_REQUIRED,
                tls_version=ssl.PROTOCOL_TLS_CLIENT,
            )
        except (OSError, ssl.SSLError) as exc:
            raise UplinkError(f"mqtt.tls: cannot load TLS material: {exc}") from exc
        client.tls_insecure_set(tls.insecure)
    return client
