"""The demo: the agent's main job on embedded defaults, with everything it talks to on loopback.

Starts a local mosquitto on a free loopback port and a local RTSP server with three cameras:
the shared kitchen clip (or ``--source``), a counter and the pass (出餐口, a close camera),
the last two built from held-out facemask pictures (see :func:`counter_clip` and
:func:`pass_clip`). Runs ``mclz-agent run`` with ``configs/demo.yaml`` for a bounded time (or
until Ctrl-C), and prints what arrives on the broker as it comes: availability, camera
status, heartbeats and alerts, with where the evidence files are.
Run it through ``./scripts/demo``, which installs what is missing first.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from mclz_testkit.broker import Broker
from mclz_testkit.clips import (
    Picture,
    close_up_picture,
    held_out_faces,
    held_out_groups,
    make_picture_clip,
    make_sequence_clip,
    take_mask_off,
)
from mclz_testkit.mqtt import MqttCollector, MqttMessage
from mclz_testkit.rtsp import RtspServer

REPO = Path(__file__).resolve().parents[1]

DEFAULT_SOURCE = REPO.parent / "shared" / "videos" / "bareheaded_people_indoor.mp4"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--source",
        default=str(DEFAULT_SOURCE),
        help="a video file (served over RTSP on loopback) or an rtsp:// URL (default: %(default)s)",
    )
    # 75 s shows all of the pass clip (66 s from when the agent connects, 1-5 s in; its last
    # alert ends at 64 s) and two or three counter alerts.
    parser.add_argument("--duration", type=float, default=75.0, help="seconds to run (default 75)")
    parser.add_argument("--model", type=Path, default=None, help="model package directory")
    parser.add_argument(
        "--output",
        type=Path,
        default=REPO / "demo-output",
        help="state, logs (default demo-output/)",
    )
    return parser.parse_args()


def stamp(ts: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(ts))


def describe(msg: MqttMessage, root: str) -> str:  # noqa: PLR0911 - one return per topic
    """One human line per message."""
    topic = msg.topic[len(root) + 1 :]
    if topic.startswith("evidence/"):
        return f"{'evidence':<28} JPEG of alert {topic.split('/', 1)[1]}, {len(msg.payload)} bytes"
    try:
        body: dict[str, Any] = json.loads(msg.payload)
    except ValueError:
        return f"{topic:<28} {msg.payload[:80]!r}"
    if topic == "availability":
        retained = "  [retained]" if msg.retain else ""
        return f"{'availability':<28} {body['state']} ({body['reason']}){retained}"
    if topic.startswith("camera/"):
        return (
            f"{topic:<28} {body['state']} (was {body['previous']}, {body['reason']}), "
            f"{body['fps']} fps, {body['reconnects']} reconnects"
        )
    if topic == "heartbeat":
        det = body["detector"]
        backlog = sum(body["outbox"]["backlog"].values())
        return (
            f"{'heartbeat':<28} up {body['uptime_s']:.0f} s, cameras {body['cameras_online']}/"
            f"{body['cameras_total']} online, {det['frames']} frames analysed "
            f"({det['avg_batch_ms']} ms each), {body['alerts']['raised']} alerts, backlog {backlog}"
        )
    if topic == "alert":
        det = ", ".join(f"{d['label']} {d['confidence']:.2f}" for d in body["detections"])
        ev = body.get("evidence", {})
        if body["event"] == "end":
            return (
                f"{'ALERT ended':<28} {body['type']} on {body['camera']} ({body['end_reason']}), "
                f"seen {body['duration_s']:.1f} s in {body['hits']} frames, best [{det}]"
            )
        return (
            f"{'ALERT':<28} {body['type']} on {body['camera']} ({body['camera_name']}), "
            f"{body['duration_s']:.1f} s, [{det}], evidence {ev.get('bytes', 0)} bytes"
        )
    return f"{topic:<28} {json.dumps(body, ensure_ascii=False)[:100]}"


def counter_clip(output: Path) -> Path | None:
    """The counter camera's clip: held-out people without a mask, then with one, 6 s each.

    None when ``../shared/datasets/facemask`` is not there.
    """
    bare = held_out_faces({"without_mask"})[:3]
    masked = held_out_faces({"with_mask"})[:3]
    if not bare or not masked:
        return None
    return make_picture_clip(output / "counter.mp4", [*bare, *masked], hold=6.0)


PASS_SIZE = (1280, 720)
#: The close-up's face height in the 1280x720 pass picture: someone leaning over the pass.
CLOSE_UP_FACE_PX = 400
#: The group case: (masked, one mask off) seconds, repeated. Each 4-s unmasking is seen in
#: about 8 frames at the pass camera's 0.5 s, well over min_duration (2 s in demo.yaml).
GROUP_MASKED_S, GROUP_UNMASKED_S, GROUP_ROUNDS = 8.0, 4.0, 4
#: The group masked again at the end, longer than end_after (2 s): the last unmasking's
#: alert ends before the clip starts over with the unmasked close-up (else they merge).
GROUP_TAIL_S = 4.0


def pass_clip(output: Path) -> Path | None:
    """The pass camera's 1280x720 clip, 66 s, from held-out facemask pictures (ground truth only).

    A close-up of one unmasked face (400 px tall) for 8 s, then a masked one for 6 s; then
    the group case: a picture of several people all wearing masks (the held-out one with most
    faces, each at least 32 px tall) for 8 s, and the same picture with one mask taken off
    (an unmasked held-out face pasted over the largest face that overlaps no other) for 4 s,
    four times, and the group masked for 4 s more. Expected: one no_mask alert for the
    close-up and one per unmasking (each at 0.83 on the default model, threshold 0.65).

    None when ``../shared/datasets/facemask`` is not there.
    """
    bare = held_out_faces({"without_mask"})
    masked = held_out_faces({"with_mask"})
    groups = held_out_groups()
    if not bare or not masked or not groups:
        return None
    folder = output / "pass"
    folder.mkdir(parents=True, exist_ok=True)
    width, height = PASS_SIZE
    close_bare = close_up_picture(
        bare[0], folder / "close_up_bare.jpg", CLOSE_UP_FACE_PX, width=width, height=height
    )
    close_masked = close_up_picture(
        masked[0], folder / "close_up_masked.jpg", CLOSE_UP_FACE_PX, width=width, height=height
    )
    unmasked, _box = take_mask_off(groups[0], bare[0])
    segments: list[tuple[Picture, float]] = [(close_bare, 8.0), (close_masked, 6.0)]
    for _ in range(GROUP_ROUNDS):
        segments += [(groups[0], GROUP_MASKED_S), (unmasked, GROUP_UNMASKED_S)]
    segments.append((groups[0], GROUP_TAIL_S))
    return make_sequence_clip(output / "pass.mp4", segments, width=width, height=height)


def write_config(
    output: Path,
    broker: Broker,
    camera_url: str,
    extra_urls: dict[str, str | None],
    model: Path | None,
) -> Path:
    """The demo's agent.yaml: configs/demo.yaml with the local services' URLs and folders.

    ``extra_urls`` maps a camera id of demo.yaml (counter-1, pass-1) to its URL, or to None
    to drop the camera (its clip could not be built).
    """
    data = yaml.safe_load((REPO / "configs" / "demo.yaml").read_text(encoding="utf-8"))
    data["mqtt"]["url"] = broker.url
    data["cameras"]["kitchen-1"]["url"] = camera_url
    for camera, url in extra_urls.items():
        if url is None:
            del data["cameras"][camera]
        else:
            data["cameras"][camera]["url"] = url
    data["storage"]["state_dir"] = str(output / "state")
    data["alarm"]["sounder"]["directory"] = str(output / "alarms")  # what the kitchen hears
    data["model"]["path"] = str(model if model is not None else REPO / "models" / "default")
    path = output / "agent.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return path


def main() -> int:
    args = parse_args()
    output: Path = args.output.resolve()
    output.mkdir(parents=True, exist_ok=True)
    stop = False

    def on_signal(_signum: int, _frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)

    broker = Broker(output / "broker").start()
    rtsp: RtspServer | None = None
    if args.source.startswith(("rtsp://", "rtsps://")):
        camera_url = args.source
    else:
        source = Path(args.source)
        if not source.is_file():
            print(
                f"demo: video {source} not found (pass --source FILE or an rtsp:// URL)",
                file=sys.stderr,
            )
            broker.stop()
            return 2
        mounts = {"/kitchen": source}
        counter = counter_clip(output)
        if counter is not None:
            mounts["/counter"] = counter
        at_pass = pass_clip(output)
        if at_pass is not None:
            mounts["/pass"] = at_pass
        rtsp = RtspServer(mounts, loop=True).start()
        camera_url = rtsp.url("/kitchen")
    extra_urls = {
        camera: rtsp.url(mount) if rtsp is not None and mount in rtsp.mounts else None
        for camera, mount in (("counter-1", "/counter"), ("pass-1", "/pass"))
    }
    config = write_config(output, broker, camera_url, extra_urls, args.model)
    cfg = yaml.safe_load(config.read_text(encoding="utf-8"))
    ident = cfg["identity"]
    root = f"mclz/{ident['city']}/{ident['school_id']}/{ident['box_id']}"
    collector = MqttCollector(broker.url, f"{root}/#")
    log_path = output / "agent.log"
    print(f"broker   {broker.url}   (subscribed to {root}/#)")
    print(f"camera   {camera_url}   ({args.source})")
    if extra_urls["counter-1"] is not None:
        print(
            f"camera   {extra_urls['counter-1']}   "
            "(held-out facemask pictures: without, then with a mask)"
        )
    if extra_urls["pass-1"] is not None:
        print(
            f"camera   {extra_urls['pass-1']}   (1280x720 at the pass: an unmasked close-up, a "
            "masked one, then a masked group with one mask off for 4 s, four times)"
        )
    print(f"agent    mclz-agent run --config {config}   (log: {log_path})")
    print(f"running for {args.duration:.0f} s; Ctrl-C stops earlier\n")

    with log_path.open("wb") as log:
        agent = subprocess.Popen(
            [sys.executable, "-m", "agent", "run", "--config", str(config)],
            cwd=REPO,
            stdout=log,
            stderr=log,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    shown = 0
    started = time.monotonic()
    exit_code: int | None = None
    rusage = None
    shutdown_s = 0.0
    try:
        while not stop and time.monotonic() - started < args.duration:
            time.sleep(0.5)
            messages = collector.messages()
            for msg in messages[shown:]:
                print(f"[{stamp(time.time())}] {describe(msg, root)}", flush=True)
            shown = len(messages)
            if agent.poll() is not None:
                print(f"\nthe agent exited early with code {agent.returncode}; its log ends:")
                tail = log_path.read_text(encoding="utf-8", errors="replace").splitlines()[-8:]
                print("\n".join(f"  {line}" for line in tail))
                break
    finally:
        if agent.poll() is None:
            t0 = time.monotonic()
            agent.send_signal(signal.SIGTERM)
            try:
                _pid, status, rusage = os.wait4(agent.pid, 0)
                exit_code = os.waitstatus_to_exitcode(status)
            except ChildProcessError:
                exit_code = agent.wait()
            shutdown_s = time.monotonic() - t0
        else:
            exit_code = agent.returncode
        time.sleep(0.5)
        for msg in collector.messages()[shown:]:
            print(f"[{stamp(time.time())}] {describe(msg, root)}")
        collector.close()
        if rtsp is not None:
            rtsp.close()
        broker.stop()

    summarize(
        collector.messages(),
        root=root,
        output=output,
        exit_code=exit_code,
        shutdown_s=shutdown_s,
        rusage=rusage,
        ran_s=time.monotonic() - started,
        cameras=len(cfg["cameras"]),
    )
    return 0 if exit_code == 0 else 1


def summarize(
    messages: list[MqttMessage],
    *,
    root: str,
    output: Path,
    exit_code: int | None,
    shutdown_s: float,
    rusage: Any,
    ran_s: float,
    cameras: int,
) -> None:
    counts: dict[str, int] = {}
    for msg in messages:
        topic = msg.topic[len(root) + 1 :]
        topic = "evidence/<alert id>" if topic.startswith("evidence/") else topic
        counts[topic] = counts.get(topic, 0) + 1
    print("\n== what arrived on the broker")
    for topic, count in sorted(counts.items()):
        print(f"  {topic:<30} {count}")
    alerts = [
        body
        for body in (json.loads(m.payload) for m in messages if m.topic == f"{root}/alert")
        if body["event"] == "start"
    ]
    per_camera: dict[str, int] = {}
    for alert in alerts:
        key = f"{alert['camera']} {alert['type']}"
        per_camera[key] = per_camera.get(key, 0) + 1
    print(f"\n== alerts: {len(alerts)}")
    if per_camera:
        print("  " + ", ".join(f"{key}: {n}" for key, n in sorted(per_camera.items())))
    evidence = sorted((output / "state" / "evidence").rglob("*.jpg"))
    by_id = {p.stem: p for p in evidence}
    for alert in alerts:
        where = by_id.get(alert["id"])
        print(
            f"  {alert['ts']}  {alert['type']:<10} {alert['camera']}  evidence: {where or '(none)'}"
        )
    if not alerts and exit_code == 0:
        print("  (none: the model saw no violation that lasted min_duration in this run)")
    elif not alerts:
        print("  (none: the agent did not run normally; see its log)")
    sounds = sorted((output / "alarms").glob("*.wav"))
    print(f"\n== on-site alarms (beep + Mandarin prompt, as WAV files): {len(sounds)}")
    for sound in sounds[:5]:
        print(f"  {sound}")
    print(f"\n== agent exit code {exit_code}, shutdown took {shutdown_s:.1f} s")
    if rusage is not None:
        cpu = rusage.ru_utime + rusage.ru_stime
        print(
            f"   CPU {cpu:.1f} s over {ran_s:.0f} s = {100 * cpu / ran_s:.0f}% of one core "
            f"for {cameras} camera(s); peak RSS {rusage.ru_maxrss / 1024:.0f} MB"
        )
    print(f"   database: {output / 'state' / 'agent.db'}   log: {output / 'agent.log'}")


if __name__ == "__main__":
    sys.exit(main())
