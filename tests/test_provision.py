"""The installer's commands: init, camera add/remove/snapshot, service install."""

from __future__ import annotations

import json
import re
import shutil
import stat
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from agent.cli.main import app
from agent.config import load_config
from agent.install import provision
from agent.install.unit import sync_credentials
from mclz_testkit.common import free_port
from mclz_testkit.factories import ClipFactory, RtspServerFactory

SECRET = "Inst-S3cret!"
CAM_SECRET = "Cam-P@ss:w0rd"
runner = CliRunner()

INIT_FLAGS = [
    "--city", "hangzhou", "--school-id", "330106-0012", "--box-id", "box-01",
    "--school-name", "某某区实验小学", "--broker-url", "mqtt://127.0.0.1:1883",
    "--username", "box-01",
]  # fmt: skip


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def init_box(tmp_path: Path, *extra: str) -> tuple[Path, Path]:
    """A config written by init --non-interactive, and its credential store."""
    config, creds = tmp_path / "etc" / "agent.yaml", tmp_path / "creds"
    result = runner.invoke(
        app,
        ["init", "-c", str(config), "--credentials-dir", str(creds), "--non-interactive",
         "--password-env", "MQTT_PW", "--state-dir", str(tmp_path / "state"), *INIT_FLAGS,
         *extra],
        env={"MQTT_PW": SECRET},
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    return config, creds


def test_init_non_interactive_writes_a_valid_config_and_a_private_secret(tmp_path: Path) -> None:
    """Flags only: the config passes config check, the password is in a 0600 credential."""
    config, creds = init_box(tmp_path)
    text = config.read_text()
    assert SECRET not in text
    assert "{credential: mqtt-password}" in text
    assert (creds / "mqtt-password").read_text().strip() == SECRET
    assert mode_of(creds / "mqtt-password") == 0o600
    assert mode_of(creds) == 0o700
    assert mode_of(config) == 0o640
    check = runner.invoke(
        app, ["config", "check", str(config)], env={"MCLZ_CREDENTIALS_DIR": str(creds)}
    )
    assert check.exit_code == 0, check.output
    assert "mclz/hangzhou/330106-0012/box-01" in check.output
    cfg = load_config(config)
    assert cfg.identity.school_name == "某某区实验小学"
    assert cfg.identity.timezone == "Asia/Shanghai"
    assert cfg.mqtt.username == "box-01"
    assert cfg.cameras == {}


def test_init_from_a_seed_file_with_flags_overriding_it(tmp_path: Path) -> None:
    """Mass provisioning: answers from a seed file (password from a file), a flag wins."""
    (tmp_path / "pw").write_text(SECRET + "\n")
    seed = tmp_path / "seed.yaml"
    seed.write_text(
        yaml.safe_dump(
            {
                "city": "wenzhou",
                "school_id": "330302-0101",
                "box_id": "box-07",
                "broker_url": "mqtts://iot.example.cn:8883",
                "username": "box-07",
                "password_file": "pw",
                "timezone": "Asia/Shanghai",
            }
        )
    )
    config = tmp_path / "agent.yaml"
    result = runner.invoke(
        app,
        ["init", "-c", str(config), "--seed", str(seed), "--box-id", "box-08", "-y",
         "--credentials-dir", str(tmp_path / "creds")],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    cfg = load_config(config)
    assert cfg.identity.city == "wenzhou"
    assert cfg.identity.box_id == "box-08"
    assert cfg.mqtt.use_tls
    assert (tmp_path / "creds" / "mqtt-password").read_text().strip() == SECRET


def test_init_interactive_reprompts_until_each_answer_is_valid(tmp_path: Path) -> None:
    """Driven prompts: a bad id, time zone and URL are explained and asked again."""
    answers = [
        "Hang Zhou",  # invalid id
        "hangzhou",
        "330106-0012",
        "",  # box id: default box-01
        "某某小学",
        "Mars/Olympus",  # unknown zone
        "",  # default Asia/Shanghai
        "http://iot.example.cn",  # wrong scheme
        "mqtt://127.0.0.1:1883",
        "",  # protocol 5
        "",  # username: default box-01
        SECRET,  # hidden password
        str(tmp_path / "state"),
        "",  # model: the packaged one
    ]
    config = tmp_path / "agent.yaml"
    result = runner.invoke(
        app,
        ["init", "-c", str(config), "--credentials-dir", str(tmp_path / "creds")],
        input="\n".join(answers) + "\n",
    )
    assert result.exit_code == 0, result.output
    assert "'Hang Zhou' is not a valid id" in result.output
    assert "unknown time zone 'Mars/Olympus'" in result.output
    assert "scheme must be mqtt:// or mqtts://" in result.output
    assert SECRET not in result.output  # the password prompt hides its input
    cfg = load_config(config)
    assert (cfg.identity.city, cfg.identity.box_id) == ("hangzhou", "box-01")
    assert cfg.mqtt.username == "box-01"
    assert cfg.model.path == provision.PACKAGED_MODEL


def test_init_names_every_missing_or_bad_answer(tmp_path: Path) -> None:
    """--non-interactive without required answers, or with bad ones: exit 2, each named."""
    config = tmp_path / "agent.yaml"
    missing = runner.invoke(app, ["init", "-c", str(config), "-y", "--school-id", "s1"])
    assert missing.exit_code == 2
    assert "--city: required" in missing.output
    assert "--broker-url: required" in missing.output
    bad = runner.invoke(
        app,
        ["init", "-c", str(config), "-y", "--city", "HZ", "--school-id", "s1",
         "--broker-url", "mqtt://h", "--timezone", "Nowhere/City", "--cert-file", "/nope.pem",
         "--key-file", "/nope.key"],
    )  # fmt: skip
    assert bad.exit_code == 2
    assert "city: 'HZ' is not a valid id" in bad.output
    assert "timezone: unknown time zone" in bad.output
    assert "cert_file: /nope.pem: no such file" in bad.output
    assert not config.exists()
    seed = tmp_path / "seed.yaml"
    seed.write_text("city: hz\nschool: s1\n")
    unknown = runner.invoke(app, ["init", "-c", str(config), "--seed", str(seed), "-y"])
    assert unknown.exit_code == 2
    assert "unknown key 'school'" in unknown.output


def test_init_keeps_an_existing_config_unless_forced(tmp_path: Path) -> None:
    """A second init is refused; with --force the old file is kept as .bak."""
    config, _ = init_box(tmp_path)
    before = config.read_text()
    again = runner.invoke(
        app, ["init", "-c", str(config), "-y", *INIT_FLAGS], env={"MQTT_PW": SECRET}
    )
    assert again.exit_code == 2
    assert "exists: use --force" in again.output
    assert config.read_text() == before
    config2, _ = init_box(tmp_path, "--force", "--timezone", "Asia/Urumqi")
    assert config2 == config
    assert config.with_name("agent.yaml.bak").read_text() == before
    assert load_config(config).identity.timezone == "Asia/Urumqi"


def add(config: Path, creds: Path, *args: str) -> tuple[int, str]:
    result = runner.invoke(
        app,
        ["camera", "add", *args, "-c", str(config), "--credentials-dir", str(creds),
         "--seconds", "1", "--timeout", "5"],
    )  # fmt: skip
    return result.exit_code, result.output


def test_camera_add_probes_then_saves_with_the_password_in_the_store(
    rtsp_server_factory: RtspServerFactory, clip_factory: ClipFactory, tmp_path: Path
) -> None:
    """A reachable camera (main + sub) is saved; its password leaves the URL for the store."""
    server = rtsp_server_factory(
        {"/main": clip_factory("main.mp4", width=1280, height=720, seconds=3),
         "/sub": clip_factory("sub.mp4", seconds=3)},
        user="admin",
        password=CAM_SECRET,
    )  # fmt: skip
    config, creds = init_box(tmp_path)
    code, output = add(
        config, creds, "kitchen-1", server.url("/main", user="admin", password=CAM_SECRET),
        "--sub", server.url("/sub", user="admin"), "--name", "后厨操作间",
    )  # fmt: skip
    assert code == 0, output
    assert "ok    main" in output
    assert "1280x720 h264" in output
    assert "640x360 h264" in output
    assert CAM_SECRET not in output
    text = config.read_text()
    assert CAM_SECRET not in text
    assert "written by `mclz-agent init`" in text  # the file's comments survive the edit
    assert (creds / "camera-kitchen-1").read_text().strip() == CAM_SECRET
    assert mode_of(creds / "camera-kitchen-1") == 0o600
    cfg = load_config(config)
    cam = cfg.cameras["kitchen-1"]
    assert cam.name == "后厨操作间"
    assert cam.url == server.url("/sub", user="admin")
    assert cam.main_url == server.url("/main", user="admin")
    assert cam.password is not None
    assert cam.password.credential == "camera-kitchen-1"
    check = runner.invoke(
        app, ["config", "check", str(config)], env={"MCLZ_CREDENTIALS_DIR": str(creds)}
    )
    assert check.exit_code == 0, check.output


def test_camera_add_refuses_a_dead_stream_unless_forced(tmp_path: Path) -> None:
    """Nothing listens: exit 6 with the reason and the config untouched; --force saves it."""
    config, creds = init_box(tmp_path)
    before = config.read_text()
    url = f"rtsp://127.0.0.1:{free_port()}/Streaming/Channels/102"
    code, output = add(config, creds, "serving", url)
    assert code == 6
    assert "(refused)" in output
    assert "not saved" in output
    assert config.read_text() == before
    code, output = add(config, creds, "serving", url, "--force")
    assert code == 0, output
    assert load_config(config).cameras["serving"].url == url


def test_camera_add_wrong_password_says_auth_failed(
    rtsp_server_factory: RtspServerFactory, clip_factory: ClipFactory, tmp_path: Path
) -> None:
    """A wrong password is named as such and not saved (nor shown)."""
    server = rtsp_server_factory({"/cam": clip_factory(seconds=2)}, user="admin", password=SECRET)
    config, creds = init_box(tmp_path)
    code, output = add(config, creds, "k1", server.url("/cam", user="admin", password="bad-pw1"))
    assert code == 6
    assert "(auth_failed)" in output
    assert "bad-pw1" not in output
    assert not (creds / "camera-k1").exists()


def test_camera_add_existing_and_bad_ids(tmp_path: Path) -> None:
    """An existing id needs --replace; an id that cannot be a topic level is refused."""
    config, creds = init_box(tmp_path)
    url = f"rtsp://127.0.0.1:{free_port()}/a"
    assert add(config, creds, "k1", url, "--force")[0] == 0
    code, output = add(config, creds, "k1", url + "b", "--force")
    assert code == 2
    assert "use --replace" in output
    code, output = add(config, creds, "k1", url + "b", "--force", "--replace")
    assert code == 0, output
    assert load_config(config).cameras["k1"].url == url + "b"
    code, output = add(config, creds, "Kitchen 1", url, "--force")
    assert code == 2
    assert "camera id 'Kitchen 1'" in output


def test_camera_remove_deletes_it_and_its_password_but_not_a_needed_zone(
    tmp_path: Path,
) -> None:
    """remove drops the camera and its credential; a zone a rule needs blocks it."""
    config, creds = init_box(tmp_path)
    url = f"rtsp://127.0.0.1:{free_port()}/a"
    code, _ = add(config, creds, "k1", url.replace("rtsp://", "rtsp://admin:pw9@"), "--force")
    assert code == 0
    assert (creds / "camera-k1").exists()
    removed = runner.invoke(
        app, ["camera", "remove", "k1", "-c", str(config), "--credentials-dir", str(creds)]
    )
    assert removed.exit_code == 0, removed.output
    assert "k1" not in load_config(config).cameras
    assert not (creds / "camera-k1").exists()
    # A rule naming a zone of camera k2 only: removing k2 would break the config.
    assert add(config, creds, "k2", url, "--force")[0] == 0
    data = yaml.safe_load(config.read_text())
    data["cameras"]["k2"]["zones"] = {"prep": {"polygon": [[0, 0], [1, 0], [1, 1]]}}
    data["rules"] = {"no_mask": {"labels": ["face_no_mask"], "zones": ["prep"]}}
    config.write_text(yaml.safe_dump(data, allow_unicode=True))
    before = config.read_text()
    blocked = runner.invoke(app, ["camera", "remove", "k2", "-c", str(config)])
    assert blocked.exit_code == 2
    assert "no camera has a zone 'prep'" in blocked.output
    assert config.read_text() == before
    unknown = runner.invoke(app, ["camera", "remove", "k9", "-c", str(config)])
    assert unknown.exit_code == 2
    assert "no camera 'k9'" in unknown.output


def test_camera_snapshot_draws_the_zones_on_a_live_frame(
    rtsp_server_factory: RtspServerFactory, clip_factory: ClipFactory, tmp_path: Path
) -> None:
    """The PNG is the camera's frame size, with each zone's outline in its colour."""
    server = rtsp_server_factory({"/cam": clip_factory(seconds=3)})
    config, creds = init_box(tmp_path)
    assert add(config, creds, "k1", server.url("/cam"))[0] == 0
    data = yaml.safe_load(config.read_text())
    data["cameras"]["k1"]["zones"] = {
        "prep": {"name": "切配区", "polygon": [[0.1, 0.2], [0.5, 0.2], [0.5, 0.8], [0.1, 0.8]]},
        "tv": {"polygon": [[0.7, 0.1], [0.9, 0.1], [0.9, 0.3], [0.7, 0.3]], "exclude": True},
    }
    config.write_text(yaml.safe_dump(data, allow_unicode=True))
    out = tmp_path / "k1.png"
    result = runner.invoke(app, ["camera", "snapshot", "k1", "-c", str(config), "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "2 zone(s) drawn" in result.output
    image = cv2.imread(str(out))
    assert image is not None
    assert image.shape == (360, 640, 3)
    # Middle of the left edge of 'prep' (x=0.1*640, y=0.5*360) is drawn green (BGR 80,200,60).
    green = image[175:185, 62:66].reshape(-1, 3).astype(int)
    assert np.any(np.all(np.abs(green - [80, 200, 60]) < 40, axis=1))
    red = image[60:70, 446:450].reshape(-1, 3).astype(int)  # 'tv' left edge, exclusion red
    assert np.any(np.all(np.abs(red - [60, 60, 230]) < 40, axis=1))
    missing = runner.invoke(app, ["camera", "snapshot", "nope", "-c", str(config)])
    assert missing.exit_code == 2
    assert "no camera 'nope'" in missing.output


def test_service_install_under_a_root_writes_a_valid_unit_and_credentials(
    tmp_path: Path,
) -> None:
    """service install --root: the unit (this install's paths) and one LoadCredential each."""
    config, creds = init_box(tmp_path)
    url = f"rtsp://127.0.0.1:{free_port()}/a".replace("rtsp://", "rtsp://admin:pw9@")
    assert add(config, creds, "k1", url, "--force")[0] == 0
    root = tmp_path / "image"
    exe = shutil.which("mclz-agent") or str(Path(__file__).parents[1] / ".venv/bin/mclz-agent")
    dry = runner.invoke(
        app, ["service", "install", "-c", str(config), "--root", str(root), "--exec", exe,
              "--credentials-dir", str(creds), "--dry-run"],
    )  # fmt: skip
    assert dry.exit_code == 0, dry.output
    assert not root.exists()
    result = runner.invoke(
        app, ["service", "install", "-c", str(config), "--root", str(root), "--exec", exe,
              "--credentials-dir", str(creds)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    unit = root / "etc/systemd/system/mclz-agent.service"
    dropin = root / "etc/systemd/system/mclz-agent.service.d/credentials.conf"
    text = unit.read_text()
    assert f"ExecStart={exe} run --config {config}" in text
    assert f"ReadWritePaths={(tmp_path / 'state').absolute()}" in text
    loads = re.findall(r"(?m)^LoadCredential=(\S+)$", dropin.read_text())
    assert loads == [f"camera-k1:{creds}/camera-k1", f"mqtt-password:{creds}/mqtt-password"]
    if shutil.which("systemd-analyze") is not None:
        verify = subprocess.run(
            ["systemd-analyze", "verify", "--man=no", str(unit)],
            capture_output=True,
            text=True,
            check=False,
        )
        problems = [ln for ln in (verify.stdout + verify.stderr).splitlines() if "mclz" in ln]
        assert verify.returncode == 0, problems
        assert problems == []
    # A later camera change rewrites the drop-in of the installed unit.
    cfg = load_config(config)
    changed = sync_credentials(
        cfg.model_copy(update={"cameras": {}}), root=root, credentials_dir=creds
    )
    assert changed == dropin
    assert re.findall(r"(?m)^LoadCredential=(\S+)$", dropin.read_text()) == [
        f"mqtt-password:{creds}/mqtt-password"
    ]
    assert sync_credentials(cfg, root=tmp_path / "bare", credentials_dir=creds) is None


def test_credentials_resolve_from_the_store_outside_systemd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without $CREDENTIALS_DIRECTORY, {credential: x} reads the installer's store."""
    config, creds = init_box(tmp_path)
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    monkeypatch.setenv("MCLZ_CREDENTIALS_DIR", str(creds))
    cfg = load_config(config)
    assert cfg.mqtt.password is not None
    assert cfg.mqtt.password.resolve("mqtt.password") == SECRET
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path / "empty"))
    result = runner.invoke(app, ["config", "check", str(config)])
    assert result.exit_code == 2
    assert "cannot read secret file" in result.output


def test_camera_discover_answers_with_a_table_or_json() -> None:
    """The CLI runs a real WS-Discovery round on this machine's network and reports it."""
    text = runner.invoke(app, ["camera", "discover", "--timeout", "0.5"])
    assert text.exit_code == 0, text.output
    assert "no ONVIF device answered within 0.5 s" in text.output or "RTSP" in text.output
    as_json = runner.invoke(app, ["camera", "discover", "--timeout", "0.5", "--json"])
    assert as_json.exit_code == 0, as_json.output
    assert isinstance(json.loads(as_json.stdout), list)
    bad = runner.invoke(app, ["camera", "discover", "--timeout", "0.5", "--interface", "eth0"])
    assert bad.exit_code == 6
    assert "eth0" in bad.output


def test_camera_snapshot_outlines_the_view_and_says_how_large_faces_reach_the_model(
    rtsp_server_factory: RtspServerFactory, clip_factory: ClipFactory, tmp_path: Path
) -> None:
    """A crop and tiles are drawn in blue, the part not analysed is dimmed, and the output
    tells how large a 60 px face reaches the model: small on a wide view, larger in tiles."""
    server = rtsp_server_factory({"/cam": clip_factory(width=1280, height=720, seconds=3)})
    config, creds = init_box(tmp_path)
    assert add(config, creds, "k1", server.url("/cam"))[0] == 0
    data = yaml.safe_load(config.read_text())
    data["model"] = {"path": str(Path(__file__).resolve().parents[1] / "models" / "default")}
    config.write_text(yaml.safe_dump(data, allow_unicode=True))
    out = tmp_path / "k1.png"
    args = ["camera", "snapshot", "k1", "-c", str(config), "-o", str(out)]
    whole = runner.invoke(app, args)
    assert whole.exit_code == 0, whole.output
    # 416 / 1280 = 0.325: a 60 px face is 20 px at the model; no warning.
    assert "picture analysed whole: objects reach the model at 0.33x (a 60 px face: 20 px)" in (
        whole.output
    )
    assert "will often be missed" not in whole.output
    plain = cv2.imread(str(out))
    data["cameras"]["k1"]["view"] = {"crop": [0.5, 0.0, 1.0, 1.0], "tiles": [2, 1]}
    config.write_text(yaml.safe_dump(data, allow_unicode=True))
    tiled = runner.invoke(app, args)
    assert tiled.exit_code == 0, tiled.output
    # Tiles of the right half: 640 / 1.85 = 346 px wide, 720 high -> 416 / 720 = 0.58.
    assert "in 2x1 tiles: objects reach the model at 0.58x (a 60 px face: 35 px)" in tiled.output
    image = cv2.imread(str(out))
    assert plain is not None
    assert image is not None
    blue = image[300:420, 639:642].reshape(-1, 3).astype(int)  # the crop's left edge, x = 640
    assert np.any(np.all(np.abs(blue - [255, 160, 0]) < 40, axis=1))
    # The left half is not analysed: dimmed to under half of what the plain snapshot shows.
    assert image[100:300, 100:500].mean() < 0.6 * plain[100:300, 100:500].mean()


def test_snapshot_warns_when_faces_reach_the_model_too_small(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A whole 1080p picture: a 60 px face is 13 px at a 416 model, and the installer is told
    to crop or tile; 2x2 tiles make it 24 px and the warning goes."""
    from agent.cli.camera import _echo_detail  # noqa: PLC0415
    from agent.config import CameraConfig  # noqa: PLC0415

    model = Path(__file__).resolve().parents[1] / "models" / "default"
    _echo_detail(CameraConfig(url="rtsp://cam/x"), model, 1920, 1080)
    whole = capsys.readouterr().out
    assert "at 0.22x (a 60 px face: 13 px)" in whole
    assert "will often be missed: set view.crop to the work area or view.tiles" in whole
    tiled = CameraConfig(url="rtsp://cam/x", view={"tiles": [2, 2]})
    _echo_detail(tiled, model, 1920, 1080)
    out = capsys.readouterr().out
    assert "in 2x2 tiles: objects reach the model at 0.40x (a 60 px face: 24 px)" in out
    assert "missed" not in out
    _echo_detail(tiled, model.parent / "absent", 1920, 1080)
    assert "(no detail estimate: " in capsys.readouterr().out
