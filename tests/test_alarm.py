"""The on-site alarm: sounds as specified, policy as specified, sounders that never block."""

from __future__ import annotations

import base64
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar
from zoneinfo import ZoneInfo

import numpy as np
import pytest
from typer.testing import CliRunner

from agent.alarm.policy import Alarm
from agent.alarm.sounders import Sounder, display_url, make_sounder
from agent.alarm.sounds import PROMPT_TEXTS, SAMPLE_RATE, SoundBank, read_wav
from agent.cli.main import app
from agent.config import AlarmConfig, BeepConfig, SounderConfig
from agent.errors import SounderError
from agent.rules.engine import Alert
from agent.store.store import Store
from agent.uplink.overrides import Mute
from mclz_testkit.common import free_port

TZ = ZoneInfo("Asia/Shanghai")
SOUNDS = Path(__file__).resolve().parents[1] / "agent" / "sounds"
runner = CliRunner()


class Clock:
    """A settable wall clock."""

    def __init__(self, when: datetime) -> None:
        self.now = when.timestamp()

    def __call__(self) -> float:
        return self.now


class RecordingSounder(Sounder):
    """Keeps what it was asked to play; blocks while ``gate`` is clear."""

    kind = "test"

    def __init__(self) -> None:
        self.played: list[tuple[str, bytes]] = []
        self.entered = threading.Event()
        self.gate = threading.Event()
        self.gate.set()

    def play(self, wav: bytes, label: str) -> None:
        self.entered.set()
        self.gate.wait(10)
        self.played.append((label, wav))


def alert(
    camera: str = "kitchen-1",
    kind: str = "no_hat",
    severity: str = "warning",
    phase: str = "start",
    zone: str | None = None,
) -> Alert:
    return Alert(
        id=f"{camera}-{kind}-{time.monotonic_ns()}",
        type=kind,
        severity=severity,
        camera_id=camera,
        started_at=0.0,
        raised_at=0.0,
        confidence=0.9,
        detections=(),
        frame=None,
        zone=zone,
        phase=phase,  # type: ignore[arg-type]
    )


def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)


@pytest.fixture
def outbox(tmp_path: Path) -> Iterator[Store]:
    with Store(tmp_path / "agent.db") as store:
        yield store


def make_alarm(
    outbox: Store, clock: Clock | None = None, sounder: Sounder | None = None, **fields: Any
) -> Alarm:
    config = AlarmConfig.model_validate({"queue_size": 100, **fields})
    return Alarm(
        config,
        outbox,
        Mute(outbox),
        tz=TZ,
        clock=clock or time.time,
        sounder=sounder if sounder is not None else RecordingSounder(),
    )


# --------------------------------------------------------------------------- sound analysis


def segments(samples: np.ndarray, threshold: float = 0.05, gap: float = 0.05) -> list[np.ndarray]:
    """Stretches of sound separated by more than ``gap`` seconds below ``threshold``."""
    loud = np.flatnonzero(np.abs(samples) > threshold)
    if loud.size == 0:
        return []
    breaks = np.flatnonzero(np.diff(loud) > gap * SAMPLE_RATE)
    starts = np.concatenate(([loud[0]], loud[breaks + 1]))
    ends = np.concatenate((loud[breaks], [loud[-1]]))
    return [samples[a : b + 1] for a, b in zip(starts, ends, strict=True)]


def peak_frequency(tone: np.ndarray) -> float:
    size = 1 << 18  # zero padding: 0.08 Hz bins
    spectrum = np.abs(np.fft.rfft(tone * np.hanning(tone.size), size))
    return float(np.argmax(spectrum)) * SAMPLE_RATE / size


def beep_segments(wav: bytes, count: int) -> list[np.ndarray]:
    samples = read_wav(wav)
    found = segments(samples, gap=0.02)
    assert len(found) >= count
    return found[:count]


def check_beeps(beeps: list[np.ndarray], beep: BeepConfig) -> None:
    assert len(beeps) == beep.count
    for tone in beeps:
        assert abs(tone.size / SAMPLE_RATE - beep.duration) <= 0.010
        assert abs(peak_frequency(tone) - beep.frequency) <= 0.02 * beep.frequency


# --------------------------------------------------------------------------- sounds


@pytest.mark.parametrize(
    ("severity", "frequency", "count"),
    [("info", 880.0, 1), ("warning", 1000.0, 2), ("critical", 1500.0, 3)],
)
def test_file_sink_renders_the_severity_beeps_then_the_prompt(
    tmp_path: Path, outbox: Store, severity: str, frequency: float, count: int
) -> None:
    """The WAV played has the severity's default beeps (Hz ±2 %, ms ±10), then the words."""
    config = AlarmConfig.model_validate(
        {"sounder": {"kind": "file", "directory": str(tmp_path / "out")}}
    )
    alarm = Alarm(config, outbox, Mute(outbox), tz=TZ)
    alarm.start()
    try:
        assert alarm.on_alert(alert(kind="no_mask", severity=severity)) == "queued"
        wait_for(lambda: alarm.stats()["played"] == 1)
    finally:
        alarm.stop(5)
    (path,) = (tmp_path / "out").glob("*.wav")
    assert "kitchen-1-no_mask" in path.name
    wav = path.read_bytes()
    assert wav[:4] == b"RIFF"
    beep = BeepConfig(frequency=frequency, duration=0.15, count=count)
    check_beeps(beep_segments(wav, count), beep)
    samples = read_wav(wav)
    beeps_end = count * 0.15 + (count - 1) * 0.1
    assert samples.size / SAMPLE_RATE > beeps_end + 0.25 + 0.5  # the prompt follows
    (row,) = outbox.alarms()
    assert (row.decision, row.reason, row.sounder, row.type) == ("played", "", "file", "no_mask")
    assert row.duration_ms is not None


def test_beeps_are_configurable(outbox: Store) -> None:
    """Frequency, tone length and count come from alarm.beeps."""
    beep = {"frequency": 2345, "duration": "250ms", "count": 4, "gap": "80ms"}
    alarm = make_alarm(outbox, beeps={"critical": beep})
    wav = alarm.sounds.render("critical", None)
    check_beeps(beep_segments(wav, 4), BeepConfig.model_validate(beep))
    assert len(segments(read_wav(wav), gap=0.02)) == 4  # no prompt: beeps only


@pytest.mark.parametrize("kind", sorted(PROMPT_TEXTS))
def test_builtin_prompts_are_speech_of_plausible_length(kind: str) -> None:
    """Each shipped prompt is 0.5-4 s of voiced sound whose energy and pitch vary like speech."""
    samples = read_wav((SOUNDS / f"{kind}.wav").read_bytes())
    loud = np.flatnonzero(np.abs(samples) > 0.02 * np.max(np.abs(samples)))
    speech = samples[loud[0] : loud[-1] + 1]
    assert 0.5 <= speech.size / SAMPLE_RATE <= 4.0
    rms = float(np.sqrt(np.mean(speech**2)))
    assert rms > 0.01
    frame = SAMPLE_RATE // 50  # 20 ms
    frames = speech[: speech.size // frame * frame].reshape(-1, frame)
    energy = np.sqrt(np.mean(frames**2, axis=1))
    assert energy.std() / energy.mean() > 0.3  # syllables and pauses, not a steady tone
    voiced = frames[energy > 0.2 * energy.max()]
    zcr = np.mean(np.abs(np.diff(np.sign(voiced), axis=1)) > 0, axis=1)
    assert zcr.std() > 0.005  # the spectrum changes from sound to sound


def test_school_recording_replaces_prompt_and_place_is_appended(tmp_path: Path) -> None:
    """alarm.prompts replaces the built-in prompt (any rate, stereo); a place prompt follows."""
    rate = 48000
    t = np.arange(int(0.6 * rate)) / rate
    tone = (np.sin(2 * np.pi * 440 * t) * 0.3 * 32767).astype("<i2")
    stereo = np.repeat(tone[:, None], 2, axis=1)
    import wave  # noqa: PLC0415

    own = tmp_path / "mask.wav"
    with wave.open(str(own), "wb") as wav:
        wav.setnchannels(2)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.writeframes(stereo.tobytes())
    config = AlarmConfig.model_validate(
        {"prompts": {"no_mask": str(own)}, "place_prompts": {"kitchen-1/prep": str(own)}}
    )
    bank = SoundBank(config)
    parts = segments(read_wav(bank.render("info", "no_mask", "kitchen-1", "prep")), gap=0.2)
    assert len(parts) == 3  # beep, prompt, place
    assert abs(parts[1].size / SAMPLE_RATE - 0.6) < 0.01
    assert abs(peak_frequency(parts[1]) - 440) < 9
    assert len(segments(read_wav(bank.render("info", "no_mask", "other")), gap=0.2)) == 2


# --------------------------------------------------------------------------- policy


def test_cooldown_per_camera_and_type(outbox: Store) -> None:
    """A second start of the same camera x type within the cooldown is suppressed; ends ignored."""
    clock = Clock(datetime(2026, 11, 25, 10, 0, tzinfo=TZ))
    alarm = make_alarm(outbox, clock)
    assert alarm.on_alert(alert()) == "queued"
    assert alarm.on_alert(alert(phase="end")) is None
    clock.now += 299
    assert alarm.on_alert(alert()) == "cooldown"
    assert alarm.on_alert(alert(camera="kitchen-2")) == "queued"
    assert alarm.on_alert(alert(kind="no_mask")) == "queued"
    clock.now += 2
    assert alarm.on_alert(alert()) == "queued"
    assert alarm.stats()["cooldown"] == 1
    assert [(r.decision, r.reason) for r in outbox.alarms()] == [("suppressed", "cooldown")]


@pytest.mark.parametrize(
    ("when", "expected"),
    [
        (datetime(2026, 11, 28, 21, 59), "queued"),  # Saturday, before the window
        (datetime(2026, 11, 28, 22, 0), "quiet_hours"),
        (datetime(2026, 11, 28, 23, 30), "quiet_hours"),
        (datetime(2026, 11, 29, 1, 59), "quiet_hours"),  # Sunday: the tail of Saturday's window
        (datetime(2026, 11, 29, 2, 0), "queued"),
        (datetime(2026, 11, 27, 23, 0), "queued"),  # Friday night: no window
        (datetime(2026, 11, 25, 12, 30), "quiet_hours"),  # weekday lunch break
    ],
)
def test_quiet_hours_in_the_kitchen_time_zone(outbox: Store, when: datetime, expected: str) -> None:
    """Quiet-hour windows are local time (identity.tz) and may run past midnight."""
    clock = Clock(when.replace(tzinfo=TZ))
    quiet = [
        {"days": ["sat"], "start": "22:00", "end": "02:00"},
        {"days": ["mon-fri"], "start": "12:00", "end": "13:00"},
    ]
    alarm = make_alarm(outbox, clock, quiet_hours=quiet)
    assert alarm.on_alert(alert()) == expected


def test_hourly_cap_slides(outbox: Store) -> None:
    """At most max_per_hour alarms in any hour; the oldest leaving the hour frees a slot."""
    clock = Clock(datetime(2026, 11, 25, 10, 0, tzinfo=TZ))
    alarm = make_alarm(outbox, clock, cooldown=0, max_per_hour=3)
    for i in range(3):
        assert alarm.on_alert(alert(camera=f"cam-{i}")) == "queued"
        clock.now += 60
    assert alarm.on_alert(alert(camera="cam-9")) == "hourly_cap"
    clock.now += 3600 - 180
    assert alarm.on_alert(alert(camera="cam-9")) == "queued"
    assert alarm.on_alert(alert(camera="cam-8")) == "hourly_cap"
    assert alarm.stats()["hourly_cap"] == 2


def test_mute_survives_a_restart_and_is_seen_by_a_running_alarm(tmp_path: Path) -> None:
    """A mute set by another process is honoured at once, after a restart too, until it ends."""
    db = tmp_path / "agent.db"
    with Store(db) as store:
        clock = Clock(datetime.now(TZ))
        alarm = make_alarm(store, clock)
        with Store(db) as cli_store:  # what `mclz-agent alarm mute 10` does
            until = Mute(cli_store).set(10, source="cli")
        assert until is not None
        assert alarm.on_alert(alert()) == "muted"
    with Store(db) as store:  # restart
        clock = Clock(datetime.now(TZ))
        alarm = make_alarm(store, clock)
        assert alarm.on_alert(alert()) == "muted"
        clock.now = until + 1
        assert alarm.on_alert(alert()) == "queued"
        assert alarm.stats()["muted"] == 1  # counters are per run; the rows are kept
        assert [r.reason for r in store.alarms()] == ["muted", "muted"]


def test_cooldown_and_cap_outlive_a_restart(tmp_path: Path) -> None:
    """Alarms played before a restart still count for the cooldown."""
    db = tmp_path / "agent.db"
    clock = Clock(datetime(2026, 11, 25, 10, 0, tzinfo=TZ))
    with Store(db) as store:
        alarm = make_alarm(store, clock)
        alarm.start()
        assert alarm.on_alert(alert()) == "queued"
        wait_for(lambda: alarm.stats()["played"] == 1)
        alarm.stop(5)
    with Store(db) as store:
        clock.now += 60
        alarm = make_alarm(store, clock)
        assert alarm.on_alert(alert()) == "cooldown"
        assert alarm.on_alert(alert(camera="kitchen-2")) == "queued"


def test_disabled_or_speakerless_alarm_does_nothing(outbox: Store) -> None:
    """enabled: false or sounder kind none: alerts are not the alarm's business (no rows)."""
    off = Alarm(AlarmConfig(enabled=False), outbox, Mute(outbox), tz=TZ)
    none = Alarm(AlarmConfig(), outbox, Mute(outbox), tz=TZ)
    for alarm in (off, none):
        alarm.start()
        assert alarm.on_alert(alert()) is None
        alarm.stop(1)
    assert outbox.alarms() == []


def test_on_alert_enqueues_and_a_full_queue_drops(outbox: Store) -> None:
    """on_alert returns while the sounder is still busy; beyond queue_size alarms are dropped."""
    sounder = RecordingSounder()
    sounder.gate.clear()
    alarm = make_alarm(outbox, sounder=sounder, cooldown=0, queue_size=1)
    alarm.start()
    try:
        assert alarm.on_alert(alert(camera="cam-1")) == "queued"
        assert sounder.entered.wait(5)  # the worker is inside play() ...
        assert alarm.on_alert(alert(camera="cam-2")) == "queued"  # ... and we got here anyway
        assert alarm.on_alert(alert(camera="cam-3")) == "queue_full"
        assert sounder.played == []
        sounder.gate.set()
        wait_for(lambda: alarm.stats()["played"] == 2)
    finally:
        alarm.stop(5)
    assert [label for label, _ in sounder.played] == ["cam-1-no_hat", "cam-2-no_hat"]
    assert alarm.stats() == {
        "played": 2,
        "muted": 0,
        "quiet_hours": 0,
        "cooldown": 0,
        "hourly_cap": 0,
        "queue_full": 1,
        "sounder_failed": 0,
        "queued": 0,
    }
    decisions = sorted((r.camera, r.decision, r.reason) for r in outbox.alarms())
    assert decisions == [
        ("cam-1", "played", ""),
        ("cam-2", "played", ""),
        ("cam-3", "suppressed", "queue_full"),
    ]


# --------------------------------------------------------------------------- sounders


class SpeakerServer:
    """A fake IP speaker on 127.0.0.1: records requests, answers ``status``, may hold."""

    def __init__(self, status: int = 200) -> None:
        self.requests: list[dict[str, Any]] = []
        self.status = status
        self.entered = threading.Event()
        self.release = threading.Event()
        self.release.set()
        self.finished = threading.Event()
        speaker = self

        class Handler(BaseHTTPRequestHandler):
            requests: ClassVar[list[dict[str, Any]]] = self.requests

            def _handle(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                speaker.requests.append(
                    {
                        "method": self.command,
                        "path": self.path,
                        "headers": dict(self.headers),
                        "body": body,
                    }
                )
                speaker.entered.set()
                speaker.release.wait(10)
                self.send_response(speaker.status)
                self.send_header("Content-Length", "0")
                self.end_headers()
                speaker.finished.set()

            do_POST = _handle
            do_PUT = _handle

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def speaker() -> Iterator[SpeakerServer]:
    server = SpeakerServer()
    yield server
    server.close()


def http_alarm(outbox: Store, url: str, **sounder: Any) -> Alarm:
    config = AlarmConfig.model_validate(
        {"cooldown": 0, "sounder": {"kind": "http", "url": url, "timeout": 5, **sounder}}
    )
    return Alarm(config, outbox, Mute(outbox), tz=TZ)


def test_http_sounder_uploads_the_wav(
    outbox: Store, speaker: SpeakerServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The speaker gets the WAV with the configured method, headers and basic auth."""
    monkeypatch.setenv("SPEAKER_PW", "spk-Secret-9")
    alarm = http_alarm(
        outbox,
        f"{speaker.url}/api/play?volume=80",
        method="PUT",
        headers={"X-Zone": "kitchen"},
        username="admin",
        password={"env": "SPEAKER_PW"},
    )
    alarm.start()
    try:
        alarm.on_alert(alert(kind="food_uncovered", severity="critical"))
        wait_for(lambda: alarm.stats()["played"] == 1)
    finally:
        alarm.stop(5)
    (request,) = speaker.requests
    assert request["method"] == "PUT"
    assert request["path"] == "/api/play?volume=80"
    assert request["headers"]["Content-Type"] == "audio/wav"
    assert request["headers"]["X-Zone"] == "kitchen"
    expected = base64.b64encode(b"admin:spk-Secret-9").decode()
    assert request["headers"]["Authorization"] == f"Basic {expected}"
    assert request["body"][:4] == b"RIFF"
    check_beeps(beep_segments(request["body"], 3), BeepConfig(frequency=1500, count=3))


def test_slow_speaker_does_not_block_on_alert(outbox: Store, speaker: SpeakerServer) -> None:
    """on_alert has returned while the speaker is still receiving; the play then completes."""
    speaker.release.clear()
    alarm = http_alarm(outbox, speaker.url)
    alarm.start()
    try:
        assert alarm.on_alert(alert()) == "queued"
        assert speaker.entered.wait(5)
        assert not speaker.finished.is_set()  # returned before the sounder finished
        assert alarm.on_alert(alert(camera="kitchen-2")) == "queued"
        speaker.release.set()
        wait_for(lambda: alarm.stats()["played"] == 2)
    finally:
        alarm.stop(5)


@pytest.mark.parametrize("failure", ["http_500", "unreachable", "command_exit_1", "no_aplay"])
def test_failing_sounders_are_counted_and_recorded(
    tmp_path: Path, outbox: Store, monkeypatch: pytest.MonkeyPatch, failure: str
) -> None:
    """A sounder that fails is logged, counted (sounder_failed) and recorded; nothing raises."""
    server = SpeakerServer(status=500)
    try:
        sounders: dict[str, dict[str, Any]] = {
            "http_500": {"kind": "http", "url": f"{server.url}/play"},
            "unreachable": {"kind": "http", "url": f"http://127.0.0.1:{free_port()}/play"},
            "command_exit_1": {"kind": "command", "command": ["false"]},
            "no_aplay": {"kind": "alsa"},
        }
        if failure == "no_aplay":
            monkeypatch.setenv("PATH", str(tmp_path))  # no aplay on PATH
        config = AlarmConfig.model_validate({"sounder": {"timeout": 5, **sounders[failure]}})
        alarm = Alarm(config, outbox, Mute(outbox), tz=TZ)
        alarm.start()
        try:
            assert alarm.on_alert(alert()) == "queued"
            wait_for(lambda: alarm.stats()["sounder_failed"] == 1)
        finally:
            alarm.stop(5)
    finally:
        server.close()
    assert alarm.stats()["played"] == 0
    wait_for(lambda: len(outbox.alarms()) == 1)
    (row,) = outbox.alarms()
    assert (row.decision, row.reason) == ("failed", "sounder_failed")


def test_command_sounder_gets_the_file(tmp_path: Path) -> None:
    """'{file}' in the command is the WAV's path."""
    target = tmp_path / "copy.wav"
    sounder = make_sounder(
        SounderConfig(kind="command", command=("cp", "{file}", str(target)), timeout=5)
    )
    sounder.play(b"RIFF....WAVE", "kitchen-1-no_hat")
    assert target.read_bytes() == b"RIFF....WAVE"
    with pytest.raises(SounderError, match="exited with 1"):
        make_sounder(SounderConfig(kind="command", command=("false",))).play(b"", "x")


def test_speaker_url_tokens_stay_out_of_logs(
    outbox: Store, caplog: pytest.LogCaptureFixture
) -> None:
    """A token in the speaker URL's query or userinfo is masked in messages and logs."""
    assert display_url("http://u:pw@host/play?token=abc") == "http://u:***@host/play?***"
    url = f"http://127.0.0.1:{free_port()}/play?token=Tok-123456"
    alarm = http_alarm(outbox, url)
    caplog.set_level(logging.INFO, logger="agent.alarm")
    alarm.start()
    try:
        alarm.on_alert(alert())
        wait_for(lambda: alarm.stats()["sounder_failed"] == 1)
    finally:
        alarm.stop(5)
    assert "Tok-123456" not in caplog.text
    assert "127.0.0.1" in caplog.text
    assert "Tok-123456" not in alarm.sounder.describe()


def test_sounder_config_needs_its_target() -> None:
    """http needs a URL without a password, command a program, file a directory."""
    for bad in (
        {"kind": "http"},
        {"kind": "http", "url": "http://u:p@speaker/play"},
        {"kind": "command"},
        {"kind": "file"},
    ):
        with pytest.raises(ValueError, match=r"needs|password"):
            SounderConfig.model_validate(bad)


# --------------------------------------------------------------------------- CLI


def write_config(tmp_path: Path, sounder: dict[str, Any]) -> Path:
    config = {
        "identity": {"city": "hangzhou", "school_id": "s-001", "box_id": "box-01"},
        "storage": {"state_dir": str(tmp_path / "state")},
        "alarm": {"sounder": sounder},
    }
    path = tmp_path / "agent.yaml"
    path.write_text(json.dumps(config))  # JSON is YAML
    return path


def test_cli_alarm_mute(tmp_path: Path) -> None:
    """alarm mute MINUTES stores the agent's mute; 0 unmutes; out of range is a usage error."""
    cfg = write_config(tmp_path, {"kind": "none"})
    result = runner.invoke(app, ["alarm", "mute", "30", "--config", str(cfg)])
    assert result.exit_code == 0, result.output
    assert "alarm muted until" in result.output
    with Store(tmp_path / "state" / "agent.db") as store:
        until = Mute(store).until
        assert until is not None
        assert abs(until - time.time() - 1800) < 60
    result = runner.invoke(app, ["alarm", "mute", "2000", "--config", str(cfg)])
    assert result.exit_code == 2
    assert "'minutes' must be a number" in result.output
    result = runner.invoke(app, ["alarm", "mute", "0", "--config", str(cfg)])
    assert result.exit_code == 0
    assert "unmuted" in result.output
    with Store(tmp_path / "state" / "agent.db") as store:
        assert not Mute(store).muted()


def test_cli_alarm_test(tmp_path: Path) -> None:
    """alarm test plays through the sounder: 0 and a file; 7 on failure; 2 on bad input."""
    out = tmp_path / "sounds"
    cfg = write_config(tmp_path, {"kind": "file", "directory": str(out)})
    result = runner.invoke(app, ["alarm", "test", "no_mask", "--config", str(cfg)])
    assert result.exit_code == 0, result.output
    assert "played no_mask (warning) via file:" in result.output
    (played,) = out.glob("*.wav")
    check_beeps(beep_segments(played.read_bytes(), 2), BeepConfig(frequency=1000, count=2))
    result = runner.invoke(app, ["alarm", "test", "no_such", "--config", str(cfg)])
    assert result.exit_code == 2
    assert "unknown violation type" in result.output

    failing = write_config(tmp_path, {"kind": "command", "command": ["false"]})
    result = runner.invoke(app, ["alarm", "test", "--config", str(failing)])
    assert result.exit_code == 7
    assert "exited with 1" in result.output

    none = write_config(tmp_path, {"kind": "none"})
    result = runner.invoke(app, ["alarm", "test", "--config", str(none)])
    assert result.exit_code == 2
    assert "nothing to play on" in result.output


def test_cli_alarm_log(tmp_path: Path) -> None:
    """alarm log lists recent decisions, newest first, as text or JSON."""
    cfg = write_config(tmp_path, {"kind": "none"})
    result = runner.invoke(app, ["alarm", "log", "--config", str(cfg)])
    assert result.exit_code == 4  # no database yet
    with Store(tmp_path / "state" / "agent.db") as store:
        clock = Clock(datetime(2026, 11, 25, 10, 0, tzinfo=TZ))
        alarm = make_alarm(store, clock)
        alarm.on_alert(alert())
        clock.now += 10
        alarm.on_alert(alert())
    result = runner.invoke(app, ["alarm", "log", "--json", "--config", str(cfg)])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert [(r["decision"], r["reason"]) for r in rows] == [("suppressed", "cooldown")]
    assert rows[0]["camera"] == "kitchen-1"
    result = runner.invoke(app, ["alarm", "log", "--config", str(cfg)])
    assert result.exit_code == 0
    assert "cooldown" in result.output
