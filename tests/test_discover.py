"""ONVIF WS-Discovery against a fake camera on a real loopback UDP socket.

The fake camera checks every Probe it receives and answers with scripted datagrams: good
ProbeMatches, duplicates, garbage and answers to someone else's probe. The datagram parser is
also fed hostile input directly (DTDs, wrong namespaces, oversized, fuzzed bytes).
"""

from __future__ import annotations

import io
import socket
import threading
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from urllib.parse import quote

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.errors import AgentError, DiscoveryError
from agent.install.discover import (
    MAX_DATAGRAM,
    ONVIF_NETWORK_NS,
    WSD_NS,
    DiscoveredDevice,
    discover,
    parse_probe_matches,
    render_table,
    rtsp_hint,
)

SOAP12 = "http://www.w3.org/2003/05/soap-envelope"
WSA = "http://schemas.xmlsoap.org/ws/2004/08/addressing"
CAMERA_UUID = "urn:uuid:4a4b5c6d-0000-1111-2222-bcbaf5a1b2c3"
OTHER_UUID = "urn:uuid:00000000-dead-beef-0000-000000000000"
XADDR = "http://127.0.0.1:8080/onvif/device_service"
NAME = "后厨 1号 HIKVISION"
HARDWARE = "DS-2CD2T47G2-L"
LOCATION = "学校/后厨"

# (probe MessageID, index of the probe among those received) -> datagrams to send back
Script = Callable[[str, int], list[bytes]]


def probe_matches(
    relates_to: str,
    *,
    endpoint: str = CAMERA_UUID,
    name: str = NAME,
    hardware: str = HARDWARE,
    location: str = LOCATION,
    xaddrs: str = XADDR,
    discovery_ns: str = WSD_NS,
) -> bytes:
    """A ProbeMatches as a Hikvision camera sends it (prefixes and extra headers included)."""
    scopes = " ".join(
        [
            "onvif://www.onvif.org/type/video_encoder",
            "onvif://www.onvif.org/Profile/Streaming",
            f"onvif://www.onvif.org/name/{quote(name, safe='')}",
            f"onvif://www.onvif.org/hardware/{quote(hardware, safe='')}",
            f"onvif://www.onvif.org/location/{quote(location, safe='')}",
        ]
    )
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<env:Envelope xmlns:env="{SOAP12}" xmlns:wsa="{WSA}" xmlns:d="{discovery_ns}"
  xmlns:dn="{ONVIF_NETWORK_NS}" xmlns:tds="http://www.onvif.org/ver10/device/wsdl">
<env:Header>
<wsa:MessageID>urn:uuid:{uuid.uuid4()}</wsa:MessageID>
<wsa:RelatesTo>{relates_to}</wsa:RelatesTo>
<wsa:To env:mustUnderstand="true">{WSA}/role/anonymous</wsa:To>
<wsa:Action env:mustUnderstand="true">{discovery_ns}/ProbeMatches</wsa:Action>
<d:AppSequence env:mustUnderstand="true" MessageNumber="68" InstanceId="1"/>
</env:Header>
<env:Body>
<d:ProbeMatches>
<d:ProbeMatch>
<wsa:EndpointReference><wsa:Address>{endpoint}</wsa:Address></wsa:EndpointReference>
<d:Types>dn:NetworkVideoTransmitter tds:Device</d:Types>
<d:Scopes>{scopes}</d:Scopes>
<d:XAddrs>{xaddrs}</d:XAddrs>
<d:MetadataVersion>10</d:MetadataVersion>
</d:ProbeMatch>
</d:ProbeMatches>
</env:Body>
</env:Envelope>
""".encode()


def check_probe(data: bytes) -> str:
    """Assert ``data`` is a WS-Discovery 2005/04 Probe for NVTs; return its MessageID."""
    prefixes = {
        prefix: uri
        for _event, (prefix, uri) in ET.iterparse(io.BytesIO(data), events=("start-ns",))  # noqa: S314  (our own probe)
    }
    root = ET.fromstring(data)  # noqa: S314  (our own probe)
    assert root.tag == f"{{{SOAP12}}}Envelope"
    header = root.find(f"{{{SOAP12}}}Header")
    assert header is not None
    assert header.findtext(f"{{{WSA}}}Action") == f"{WSD_NS}/Probe"
    assert header.findtext(f"{{{WSA}}}To") == "urn:schemas-xmlsoap-org:ws:2005:04:discovery"
    message_id = header.findtext(f"{{{WSA}}}MessageID") or ""
    assert message_id.startswith("urn:uuid:")
    uuid.UUID(message_id.removeprefix("urn:uuid:"))
    types = root.findtext(f"{{{SOAP12}}}Body/{{{WSD_NS}}}Probe/{{{WSD_NS}}}Types") or ""
    prefix, _, local = types.partition(":")
    assert local == "NetworkVideoTransmitter"
    assert prefixes[prefix] == ONVIF_NETWORK_NS
    return message_id


class FakeCamera:
    """An ONVIF camera on an ephemeral loopback UDP port, answering probes from a script."""

    def __init__(self, script: Script, sock: socket.socket) -> None:
        self.script = script
        self.sock = sock
        self.sock.settimeout(0.05)
        self.port: int = sock.getsockname()[1]
        self.probes: list[str] = []  # MessageIDs of the valid probes received
        self.problems: list[str] = []  # why a received datagram was not a valid probe
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="fake-onvif-camera", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                data, source = self.sock.recvfrom(65536)
            except TimeoutError:
                continue
            try:
                message_id = check_probe(data)
            except (AssertionError, ValueError, KeyError, ET.ParseError) as exc:
                self.problems.append(f"{type(exc).__name__}: {exc}")
                continue
            index = len(self.probes)
            self.probes.append(message_id)
            for datagram in self.script(message_id, index):
                self.sock.sendto(datagram, source)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.sock.close()


CameraFactory = Callable[[Script], FakeCamera]


@pytest.fixture
def camera() -> Iterator[CameraFactory]:
    """Start fake cameras bound to 127.0.0.1; stop them at teardown."""
    cameras: list[FakeCamera] = []

    def start(script: Script) -> FakeCamera:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
        cameras.append(FakeCamera(script, sock))
        return cameras[-1]

    yield start
    for fake in cameras:
        fake.stop()


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def first_probe_only(message_id: str, index: int) -> list[bytes]:
    return [probe_matches(message_id)] if index == 0 else []


def assert_is_the_camera(device: DiscoveredDevice) -> None:
    assert device.endpoint == CAMERA_UUID
    assert device.xaddrs == (XADDR,)
    assert device.xaddr == XADDR
    assert device.host == "127.0.0.1"
    assert device.name == NAME
    assert device.hardware == HARDWARE
    assert device.location == LOCATION
    assert device.types == ("NetworkVideoTransmitter", "Device")
    assert "onvif://www.onvif.org/Profile/Streaming" in device.scopes


# --------------------------------------------------------------------------- over UDP


def test_discovers_a_camera_and_decodes_its_scopes(camera: CameraFactory) -> None:
    """A valid probe goes out twice with distinct MessageIDs; the answer's fields are decoded."""
    fake = camera(first_probe_only)
    devices = discover(timeout=1.0, address=("127.0.0.1", fake.port))
    assert fake.problems == []
    assert len(fake.probes) == 2
    assert len(set(fake.probes)) == 2
    assert len(devices) == 1
    assert_is_the_camera(devices[0])
    assert rtsp_hint(devices[0]) == "rtsp://127.0.0.1:554/Streaming/Channels/102"


def test_answers_to_every_probe_give_one_device(camera: CameraFactory) -> None:
    """A camera answering each of the repeated probes (twice each) is listed once."""
    fake = camera(lambda message_id, _index: [probe_matches(message_id)] * 2)
    devices = discover(timeout=1.0, address=("127.0.0.1", fake.port), retries=2)
    assert len(fake.probes) == 2
    assert [d.endpoint for d in devices] == [CAMERA_UUID]


def test_garbage_and_foreign_answers_are_dropped(camera: CameraFactory) -> None:
    """Garbage, an answer to someone else's probe and a wrong namespace do not stop discovery."""

    def script(message_id: str, index: int) -> list[bytes]:
        if index:
            return []
        return [
            b"\x00\xffnot xml at all\x9b",
            b"<?xml version='1.0'?><half",
            probe_matches(f"urn:uuid:{uuid.uuid4()}", endpoint=OTHER_UUID),
            probe_matches(
                message_id,
                endpoint=OTHER_UUID,
                discovery_ns="http://docs.oasis-open.org/ws-dd/ns/discovery/2009/01",
            ),
            probe_matches(message_id),
        ]

    fake = camera(script)
    devices = discover(timeout=1.0, address=("127.0.0.1", fake.port))
    assert fake.problems == []
    assert len(devices) == 1
    assert_is_the_camera(devices[0])


def test_devices_are_listed_once_each_in_host_order(camera: CameraFactory) -> None:
    """Two cameras behind one responder come back ordered by IP address (numerically)."""

    def script(message_id: str, index: int) -> list[bytes]:
        return [
            probe_matches(
                message_id, endpoint=OTHER_UUID, xaddrs="http://192.168.1.10/onvif/device_service"
            ),
            probe_matches(message_id, xaddrs="http://192.168.1.9/onvif/device_service"),
        ]

    fake = camera(script)
    devices = discover(timeout=1.0, address=("127.0.0.1", fake.port), retries=3)
    assert len(fake.probes) == 3
    assert [d.host for d in devices] == ["192.168.1.9", "192.168.1.10"]


def test_no_answer_gives_an_empty_list() -> None:
    """With nobody listening, discovery returns an empty list instead of raising."""
    assert discover(timeout=0.5, address=("127.0.0.1", free_udp_port())) == []


def test_interface_selects_the_outgoing_address(camera: CameraFactory) -> None:
    """An IPv4 interface address of this box is accepted and still finds the camera."""
    fake = camera(first_probe_only)
    devices = discover(timeout=1.0, address=("127.0.0.1", fake.port), interface="127.0.0.1")
    assert [d.endpoint for d in devices] == [CAMERA_UUID]


def test_multicast_probe_reaches_a_group_member() -> None:
    """The probe sent to the WS-Discovery group (TTL 1) reaches a member on this box."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("", 0))
    membership = socket.inet_aton("239.255.255.250") + socket.inet_aton("127.0.0.1")
    try:
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, membership)
    except OSError as exc:
        sock.close()
        pytest.skip(f"no multicast on loopback here: {exc}")
    fake = FakeCamera(first_probe_only, sock)
    try:
        devices = discover(
            timeout=1.0, address=("239.255.255.250", fake.port), interface="127.0.0.1"
        )
    finally:
        fake.stop()
    assert fake.problems == []
    assert [d.endpoint for d in devices] == [CAMERA_UUID]


@pytest.mark.parametrize("interface", ["eth0", "127.1", "::1", "198.51.100.7"])
def test_unusable_interface_raises_discovery_error(interface: str) -> None:
    """A name, a short form, IPv6 or an address this box does not have is refused."""
    with pytest.raises(DiscoveryError, match="interface"):
        discover(timeout=0.2, interface=interface)


def test_send_failure_raises_discovery_error() -> None:
    """A socket error when sending (broadcast without permission) is a DiscoveryError."""
    assert issubclass(DiscoveryError, AgentError)
    with pytest.raises(DiscoveryError, match="cannot send"):
        discover(timeout=0.2, address=("255.255.255.255", 3702))


@pytest.mark.parametrize(("timeout", "retries"), [(0.0, 2), (-1.0, 2), (float("nan"), 2), (1.0, 0)])
def test_bad_arguments_raise_value_error(timeout: float, retries: int) -> None:
    """A non-positive timeout or no probe at all is a programming error."""
    with pytest.raises(ValueError, match="must be"):
        discover(timeout=timeout, retries=retries)


# --------------------------------------------------------------------------- parser

MESSAGE_ID = "urn:uuid:11111111-2222-3333-4444-555555555555"
GOOD = probe_matches(MESSAGE_ID)


def test_parser_reads_a_good_answer() -> None:
    """The parser alone decodes the answer the fake camera sends."""
    devices = parse_probe_matches(GOOD, "192.0.2.7", {MESSAGE_ID})
    assert len(devices) == 1
    assert_is_the_camera(devices[0])


def test_parser_does_not_depend_on_prefixes() -> None:
    """Default namespaces, other prefixes and SOAP 1.1 parse the same as the usual prefixes."""
    data = f"""<Envelope xmlns="http://schemas.xmlsoap.org/soap/envelope/">
<Header><x:RelatesTo xmlns:x="{WSA}"> {MESSAGE_ID} </x:RelatesTo></Header>
<Body><ProbeMatches xmlns="{WSD_NS}"><ProbeMatch>
<EndpointReference xmlns="{WSA}"><Address>{CAMERA_UUID}</Address></EndpointReference>
<Scopes>onvif://www.onvif.org/Name/Dahua%20IPC onvif://www.onvif.org/location/city/x
 onvif://www.onvif.org/location/room/%E5%90%8E%E5%8E%A8</Scopes>
</ProbeMatch></ProbeMatches></Body></Envelope>""".encode()
    (device,) = parse_probe_matches(data, "192.0.2.7", {MESSAGE_ID})
    assert device.endpoint == CAMERA_UUID
    assert device.xaddrs == ()
    assert device.host == "192.0.2.7"  # no XAddr: the sender's address
    assert device.name == "Dahua IPC"
    assert device.location == "city/x, room/后厨"
    assert rtsp_hint(device) == "rtsp://192.0.2.7:554/cam/realmonitor?channel=1&subtype=1"


BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">]>
<lolz>&lol2;</lolz>"""


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"\xff\xfe<\x00a\x00/\x00>\x00", id="utf-16"),
        pytest.param(b"<a><b></a>", id="not-well-formed"),
        pytest.param(BILLION_LAUGHS, id="dtd"),
        pytest.param(b"<Envelope/>", id="no-namespace"),
        pytest.param(GOOD.replace(SOAP12.encode(), b"urn:x"), id="not-soap"),
        pytest.param(GOOD.replace(WSD_NS.encode(), b"urn:x"), id="wrong-discovery-namespace"),
        pytest.param(GOOD.replace(MESSAGE_ID.encode(), b"urn:uuid:other"), id="not-our-probe"),
        pytest.param(GOOD.replace(CAMERA_UUID.encode(), b""), id="no-endpoint"),
        pytest.param(GOOD + b"<!--" + b"x" * MAX_DATAGRAM + b"-->", id="oversized"),
    ],
)
def test_parser_ignores_unusable_datagrams(data: bytes) -> None:
    """Datagrams that are not a usable answer to our probe give no device and no exception."""
    assert parse_probe_matches(data, "192.0.2.7", {MESSAGE_ID}) == []


def test_parser_neutralises_control_characters() -> None:
    """Escape sequences hidden in url-encoded scopes never reach the terminal."""
    data = probe_matches(MESSAGE_ID, name="cam\x1b[2J\x9b1m")
    (device,) = parse_probe_matches(data, "192.0.2.7", {MESSAGE_ID})
    assert device.name == "cam\ufffd[2J\ufffd1m"


def splice(args: tuple[int, int, bytes]) -> bytes:
    at, cut, insert = args
    return GOOD[:at] + insert + GOOD[at + cut :]


@settings(max_examples=200, deadline=None)
@given(
    st.one_of(
        st.binary(max_size=1024),
        st.text(max_size=512).map(str.encode),
        st.tuples(st.integers(0, len(GOOD)), st.integers(0, 64), st.binary(max_size=64)).map(
            splice
        ),
    )
)
def test_parser_never_raises(data: bytes) -> None:
    """Whatever arrives, the parser returns a list, and every device in it has an endpoint."""
    devices = parse_probe_matches(data, "192.0.2.7", {MESSAGE_ID})
    assert all(d.endpoint and d.host for d in devices)


# --------------------------------------------------------------------------- presentation


def device(name: str = "", hardware: str = "", host: str = "192.168.1.64") -> DiscoveredDevice:
    return DiscoveredDevice(
        endpoint=CAMERA_UUID,
        xaddrs=(f"http://{host}/onvif/device_service",),
        host=host,
        name=name,
        hardware=hardware,
    )


@pytest.mark.parametrize(
    ("cam", "url"),
    [
        (device(name="HIKVISION DS-2CD2T47G2"), "rtsp://192.168.1.64:554/Streaming/Channels/102"),
        (device(hardware="海康威视 DS-2CD"), "rtsp://192.168.1.64:554/Streaming/Channels/102"),
        (
            device(name="IPC", hardware="Dahua IPC-HFW2431S"),
            "rtsp://192.168.1.64:554/cam/realmonitor?channel=1&subtype=1",
        ),
        (device(name="Uniview IPC322"), "rtsp://192.168.1.64:554/"),
        (device(host="fe80::1"), "rtsp://[fe80::1]:554/"),
    ],
)
def test_rtsp_hint_follows_the_brand(cam: DiscoveredDevice, url: str) -> None:
    """Hikvision and Dahua get their sub-stream paths, others the bare RTSP port."""
    assert rtsp_hint(cam) == url


def test_render_table_when_nobody_answered() -> None:
    """The empty table says how long we waited."""
    assert render_table([], 3.0) == "no ONVIF device answered within 3 s"
    assert render_table([], 1.5) == "no ONVIF device answered within 1.5 s"


def test_render_table_lists_every_device() -> None:
    """Each device is a row with host, name, hardware, XAddr and the RTSP guess, columns aligned."""
    devices = [
        device(name="后厨 1号", hardware="HIKVISION DS-2CD", host="192.168.1.64"),
        device(name="Door\x1b[31m", host="192.168.1.108"),
    ]
    lines = render_table(devices, 3.0).splitlines()
    assert lines[0].split() == ["HOST", "NAME", "HARDWARE", "XADDR", "RTSP", "(GUESS)"]
    assert lines[1].split() == [
        "192.168.1.64",
        "后厨",
        "1号",
        "HIKVISION",
        "DS-2CD",
        "http://192.168.1.64/onvif/device_service",
        "rtsp://192.168.1.64:554/Streaming/Channels/102",
    ]
    assert lines[2].split() == [
        "192.168.1.108",
        "Door\ufffd[31m",
        "-",
        "http://192.168.1.108/onvif/device_service",
        "rtsp://192.168.1.108:554/",
    ]
    assert "\x1b" not in "\n".join(lines)
    # The XAddr column starts at the same terminal column on every row (后厨 is 4 columns wide).
    starts = [line.index("http") + sum(ch in "后厨号" for ch in line) for line in lines[1:3]]
    assert starts[0] == starts[1]
    assert lines[0].index("XADDR") == starts[0]
    assert "camera probe" in lines[-1]
