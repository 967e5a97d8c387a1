"""ONVIF WS-Discovery: find the IP cameras on the installer's LAN (``mclz-agent camera discover``).

A Probe for ``dn:NetworkVideoTransmitter`` goes out as SOAP over UDP to the WS-Discovery
multicast group (WS-Discovery 2005/04, the version ONVIF requires); every ONVIF camera on the
segment answers with a unicast ProbeMatches naming its device-service URLs (XAddrs) and its
scopes (name, hardware, location). UDP is lossy, so the probe is sent more than once and the
answers are deduplicated by the camera's endpoint address.

Anyone on the LAN can send us datagrams: an answer that is too large, not UTF-8 XML, carries a
DTD, uses other namespaces or does not relate to one of our probes is logged at debug level and
dropped, never raised. Only the network itself failing raises :class:`DiscoveryError`.

The RTSP URL a camera streams on is not part of discovery: :func:`rtsp_hint` guesses it from the
brand, and ``mclz-agent camera probe`` confirms it.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import time
import unicodedata
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Container, Sequence
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from agent.errors import DiscoveryError

logger = logging.getLogger(__name__)

MULTICAST_ADDRESS = ("239.255.255.250", 3702)
MAX_DATAGRAM = 64 * 1024  # larger answers are refused unparsed
PROBE_SPACING = 0.1  # seconds between repeated probes

WSD_NS = "http://schemas.xmlsoap.org/ws/2005/04/discovery"
ONVIF_NETWORK_NS = "http://www.onvif.org/ver10/network/wsdl"
_SOAP12_NS = "http://www.w3.org/2003/05/soap-envelope"
_WSA_NS = "http://schemas.xmlsoap.org/ws/2004/08/addressing"
# WS-Discovery 2005/04 is bound to SOAP 1.2 and WS-Addressing 2004/08; some firmwares answer in
# a SOAP 1.1 envelope or with the 2005/08 addressing namespace, and are otherwise fine.
_SOAP_NAMESPACES = (_SOAP12_NS, "http://schemas.xmlsoap.org/soap/envelope/")
_WSA_NAMESPACES = (_WSA_NS, "http://www.w3.org/2005/08/addressing")
_ONVIF_SCOPE = "onvif://www.onvif.org/"

_HIKVISION = ("hikvision", "海康")
_DAHUA = ("dahua", "大华")

_PROBE = f"""<?xml version="1.0" encoding="UTF-8"?>
<s:Envelope xmlns:s="{_SOAP12_NS}" xmlns:a="{_WSA_NS}" xmlns:d="{WSD_NS}" \
xmlns:dn="{ONVIF_NETWORK_NS}">
<s:Header>
<a:Action s:mustUnderstand="1">{WSD_NS}/Probe</a:Action>
<a:MessageID>{{message_id}}</a:MessageID>
<a:ReplyTo><a:Address>{_WSA_NS}/role/anonymous</a:Address></a:ReplyTo>
<a:To s:mustUnderstand="1">urn:schemas-xmlsoap-org:ws:2005:04:discovery</a:To>
</s:Header>
<s:Body><d:Probe><d:Types>dn:NetworkVideoTransmitter</d:Types></d:Probe></s:Body>
</s:Envelope>
"""


@dataclass(frozen=True, slots=True)
class DiscoveredDevice:
    """One ONVIF camera that answered a probe.

    ``endpoint`` is the camera's WS-Addressing endpoint (usually ``urn:uuid:...``), stable across
    reboots and IP changes. ``name``, ``hardware`` and ``location`` are the url-decoded values of
    the standard ONVIF scopes (empty when the camera does not publish them); ``types`` holds the
    local names of the advertised types (``NetworkVideoTransmitter``, ``Device``).
    """

    endpoint: str
    xaddrs: tuple[str, ...]
    host: str
    scopes: tuple[str, ...] = ()
    types: tuple[str, ...] = ()
    name: str = ""
    hardware: str = ""
    location: str = ""

    @property
    def xaddr(self) -> str:
        """The first device-service URL, or ``""`` when the camera gave none."""
        return self.xaddrs[0] if self.xaddrs else ""


class _IgnoredError(Exception):
    """A datagram that is not a ProbeMatches answering one of our probes (the reason)."""


def discover(
    timeout: float = 3.0,
    *,
    address: tuple[str, int] = MULTICAST_ADDRESS,
    interface: str | None = None,
    retries: int = 2,
) -> list[DiscoveredDevice]:
    """Probe the LAN for ONVIF cameras and return those that answered, ordered by host.

    The probe (a fresh MessageID each time) is sent ``retries`` times, ``PROBE_SPACING`` apart,
    and answers are collected until ``timeout`` seconds after the first one. The multicast TTL
    is 1, so the probe never leaves the local segment; ``interface`` (an IPv4 address of this
    box) picks the NIC it goes out of on a multi-homed box.

    Raises:
        ValueError: ``timeout`` is not positive or ``retries`` is below 1.
        DiscoveryError: ``interface`` is not an IPv4 address of this box, or the socket cannot
            send or receive (no multicast route, no permission).
    """
    if not timeout > 0:  # also refuses NaN
        raise ValueError(f"timeout must be > 0 seconds, got {timeout}")
    if retries < 1:
        raise ValueError(f"retries must be >= 1, got {retries}")
    message_ids: set[str] = set()
    found: dict[str, DiscoveredDevice] = {}
    with _open_socket(interface) as sock:
        start = time.monotonic()
        for attempt in range(retries):
            if attempt:
                _collect(sock, time.monotonic() + PROBE_SPACING, message_ids, found)
            _send_probe(sock, address, message_ids)
        _collect(sock, start + timeout, message_ids, found)
    logger.debug("discovery: %d device(s) answered %d probe(s)", len(found), len(message_ids))
    return sorted(found.values(), key=_host_order)


def parse_probe_matches(
    data: bytes, sender: str, message_ids: Container[str]
) -> list[DiscoveredDevice]:
    """The devices announced by one datagram, or ``[]`` when it is not a usable answer.

    ``sender`` is the datagram's source IP, the host of a device that names no XAddr; a
    ProbeMatches counts only when its RelatesTo is one of ``message_ids``. Never raises: every
    reason to drop a datagram is logged at debug level.
    """
    try:
        return _parse(data, sender, message_ids)
    except _IgnoredError as exc:
        logger.debug("discovery: ignoring %d bytes from %s: %s", len(data), sender, exc)
        return []


def rtsp_hint(device: DiscoveredDevice) -> str:
    """A guess at the camera's sub-stream RTSP URL, from the brand in its name or hardware.

    Hikvision and Dahua (the usual brands in school kitchens) have fixed sub-stream paths; any
    other camera gets the bare ``rtsp://host:554/``. It is only a guess (the port and path are
    configurable on the camera, and OEM firmwares vary): confirm it with
    ``mclz-agent camera probe`` before putting it in the config.
    """
    host = f"[{device.host}]" if ":" in device.host else device.host
    brand = f"{device.name} {device.hardware}".lower()
    if any(marker in brand for marker in _HIKVISION):
        return f"rtsp://{host}:554/Streaming/Channels/102"
    if any(marker in brand for marker in _DAHUA):
        return f"rtsp://{host}:554/cam/realmonitor?channel=1&subtype=1"
    return f"rtsp://{host}:554/"


def render_table(devices: Sequence[DiscoveredDevice], timeout: float) -> str:
    """A plain-text table of ``devices`` for a terminal (CJK-aware column widths).

    Control characters a camera may have put in its scopes are shown as U+FFFD, so a hostile
    device cannot send escape sequences to the installer's terminal.
    """
    if not devices:
        return f"no ONVIF device answered within {timeout:g} s"
    header = ("HOST", "NAME", "HARDWARE", "XADDR", "RTSP (GUESS)")
    rows = [
        tuple(
            _printable(cell) or "-" for cell in (d.host, d.name, d.hardware, d.xaddr, rtsp_hint(d))
        )
        for d in devices
    ]
    widths = [
        max(_display_width(cell) for cell in column) for column in zip(header, *rows, strict=True)
    ]
    lines = [
        "  ".join(_pad(cell, width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in (header, *rows)
    ]
    lines.append("")
    lines.append(
        "RTSP URLs are guesses from the brand: confirm each with `mclz-agent camera probe`"
    )
    return "\n".join(lines)


# --------------------------------------------------------------------------- network


def _open_socket(interface: str | None) -> socket.socket:
    """A UDP socket on an ephemeral port whose multicast stays on the LAN.

    Raises:
        DiscoveryError: ``interface`` is not an IPv4 address of this box, or the socket cannot
            be set up.
    """
    packed_interface = b""
    if interface is not None:
        try:
            packed_interface = ipaddress.IPv4Address(interface).packed
        except ValueError as exc:
            raise DiscoveryError(
                f"interface must be an IPv4 address of this box, got {interface!r}"
            ) from exc
    try:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
    except OSError as exc:
        raise DiscoveryError(f"cannot open a UDP socket for discovery: {exc}") from exc
    try:
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 1)
        if packed_interface:
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, packed_interface)
        # Cameras answer by unicast to the probe's source address, on whichever NIC that is.
        sock.bind((interface or "0.0.0.0", 0))  # noqa: S104
    except OSError as exc:
        sock.close()
        where = f" on interface {interface}" if interface else ""
        raise DiscoveryError(f"cannot set up the discovery socket{where}: {exc}") from exc
    return sock


def _send_probe(sock: socket.socket, address: tuple[str, int], message_ids: set[str]) -> None:
    """Send one Probe with a fresh MessageID, remembered in ``message_ids``.

    Raises:
        DiscoveryError: the probe cannot be sent (no route, no permission).
    """
    message_id = f"urn:uuid:{uuid.uuid4()}"
    message_ids.add(message_id)
    try:
        sock.sendto(_PROBE.format(message_id=message_id).encode("utf-8"), address)
    except OSError as exc:
        raise DiscoveryError(
            f"cannot send a WS-Discovery probe to {address[0]}:{address[1]}: {exc}"
        ) from exc
    logger.debug("discovery: sent probe %s to %s:%d", message_id, address[0], address[1])


def _collect(
    sock: socket.socket,
    until: float,
    message_ids: Container[str],
    found: dict[str, DiscoveredDevice],
) -> None:
    """Receive answers until the monotonic time ``until``, adding new devices to ``found``.

    Raises:
        DiscoveryError: the socket fails for another reason than a timeout.
    """
    while (remaining := until - time.monotonic()) > 0:
        sock.settimeout(remaining)
        try:
            data, source = sock.recvfrom(MAX_DATAGRAM + 1)
        except TimeoutError:
            return
        except (ConnectionRefusedError, ConnectionResetError) as exc:
            # Some stacks report an ICMP port-unreachable for an earlier probe here.
            logger.debug("discovery: ignoring %s", exc)
            continue
        except OSError as exc:
            raise DiscoveryError(f"cannot receive WS-Discovery answers: {exc}") from exc
        sender = str(source[0])
        for device in parse_probe_matches(data, sender, message_ids):
            if device.endpoint in found:
                logger.debug("discovery: %s answered again from %s", device.endpoint, sender)
            else:
                logger.debug("discovery: %s at %s (%s)", device.endpoint, device.host, sender)
                found[device.endpoint] = device


# --------------------------------------------------------------------------- parsing


def _parse(data: bytes, sender: str, message_ids: Container[str]) -> list[DiscoveredDevice]:
    """The devices in one datagram.

    Raises:
        _IgnoredError: the datagram is not a ProbeMatches answering one of ``message_ids``.
    """
    if len(data) > MAX_DATAGRAM:
        raise _IgnoredError(f"larger than {MAX_DATAGRAM} bytes")
    try:
        # ONVIF mandates UTF-8; parsing the decoded text also makes expat ignore whatever
        # encoding the XML declaration claims, so the DTD check below cannot be dodged.
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise _IgnoredError("not UTF-8") from exc
    if "<!DOCTYPE" in text:
        # SOAP forbids DTDs; refusing them rules out entity-expansion bombs from the LAN.
        raise _IgnoredError("carries a DTD")
    try:
        root = ET.fromstring(text)  # noqa: S314  (no DTD, at most 64 KiB: see above)
    except ET.ParseError as exc:
        raise _IgnoredError(f"not XML ({exc})") from exc
    soap = next((ns for ns in _SOAP_NAMESPACES if root.tag == f"{{{ns}}}Envelope"), None)
    if soap is None:
        raise _IgnoredError(f"root element {root.tag[:80]!r} is not a SOAP envelope")
    header = root.find(f"{{{soap}}}Header")
    body = root.find(f"{{{soap}}}Body")
    if header is None or body is None:
        raise _IgnoredError("SOAP envelope without header or body")
    relates_to = _text(_find(header, _WSA_NAMESPACES, "RelatesTo"))
    if relates_to not in message_ids:
        raise _IgnoredError(f"relates to {relates_to[:80]!r}, not to one of our probes")
    matches = body.find(f"{{{WSD_NS}}}ProbeMatches")
    if matches is None:
        raise _IgnoredError(f"no ProbeMatches in the {WSD_NS} namespace")
    devices = []
    for match in matches.findall(f"{{{WSD_NS}}}ProbeMatch"):
        reference = _find(match, _WSA_NAMESPACES, "EndpointReference")
        endpoint = _text(
            None if reference is None else _find(reference, _WSA_NAMESPACES, "Address")
        )
        if not endpoint:
            logger.debug("discovery: ignoring a ProbeMatch from %s without endpoint", sender)
            continue
        devices.append(_device(match, endpoint, sender))
    if not devices:
        raise _IgnoredError("ProbeMatches without a usable ProbeMatch")
    return devices


def _device(match: ET.Element, endpoint: str, sender: str) -> DiscoveredDevice:
    """Build the device a ProbeMatch describes."""
    xaddrs = tuple(_text(match.find(f"{{{WSD_NS}}}XAddrs")).split())
    scopes = tuple(_text(match.find(f"{{{WSD_NS}}}Scopes")).split())
    # Type QNames use the answer's own prefixes, which ElementTree does not keep: local parts.
    types = tuple(
        qname.rpartition(":")[2] for qname in _text(match.find(f"{{{WSD_NS}}}Types")).split()
    )
    names = _scope_values(scopes, "name")
    hardware = _scope_values(scopes, "hardware")
    return DiscoveredDevice(
        endpoint=endpoint,
        xaddrs=xaddrs,
        host=_xaddr_host(xaddrs) or sender,
        scopes=scopes,
        types=types,
        name=names[0] if names else "",
        hardware=hardware[0] if hardware else "",
        location=", ".join(_scope_values(scopes, "location")),
    )


def _find(parent: ET.Element, namespaces: Sequence[str], local: str) -> ET.Element | None:
    """The first child named ``local`` in any of ``namespaces``."""
    for ns in namespaces:
        child = parent.find(f"{{{ns}}}{local}")
        if child is not None:
            return child
    return None


def _text(element: ET.Element | None) -> str:
    """The stripped text of ``element``, ``""`` when it is missing or empty."""
    return (element.text or "").strip() if element is not None else ""


def _scope_values(scopes: Sequence[str], category: str) -> list[str]:
    """Url-decoded values of the ``onvif://www.onvif.org/<category>/...`` scopes."""
    prefix = f"{_ONVIF_SCOPE}{category}/"
    values = []
    for scope in scopes:
        if scope[: len(prefix)].lower() == prefix.lower():
            value = _printable(unquote(scope[len(prefix) :]).strip())
            if value:
                values.append(value)
    return values


def _xaddr_host(xaddrs: Sequence[str]) -> str:
    """The hostname of the first XAddr, or ``""`` when there is none or it is malformed."""
    if not xaddrs:
        return ""
    try:
        return urlsplit(xaddrs[0]).hostname or ""
    except ValueError:  # e.g. an unbalanced IPv6 bracket
        return ""


def _host_order(device: DiscoveredDevice) -> tuple[bool, int, int, str, str]:
    """Sort key: IP addresses numerically (v4 before v6), then any hostnames."""
    try:
        ip = ipaddress.ip_address(device.host)
    except ValueError:
        return (True, 0, 0, device.host, device.endpoint)
    return (False, ip.version, int(ip), "", device.endpoint)


# --------------------------------------------------------------------------- rendering


def _printable(value: str) -> str:
    """``value`` with every non-printable character replaced by U+FFFD."""
    return "".join(ch if ch.isprintable() else "\ufffd" for ch in value)


def _display_width(value: str) -> int:
    """Terminal columns ``value`` takes: CJK characters take two, combining marks none."""
    width = 0
    for ch in value:
        if unicodedata.combining(ch):
            continue
        width += 2 if unicodedata.east_asian_width(ch) in {"W", "F"} else 1
    return width


def _pad(value: str, width: int) -> str:
    """``value`` padded with spaces to ``width`` terminal columns."""
    return value + " " * (width - _display_width(value))
