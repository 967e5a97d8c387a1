"""mclz-testkit: the real services that mclz-agent's tests, benchmarks and demo run against.

Dev-only: installed editable into the dev venv by ``scripts/bootstrap`` (never with
``--runtime-only``), never part of the agent's wheel. Import what you need from its modules:

- :mod:`mclz_testkit.common`: errors, free loopback ports, stopping child processes
- :mod:`mclz_testkit.broker`: a mosquitto broker (:class:`~mclz_testkit.broker.Broker`)
- :mod:`mclz_testkit.mqtt`: MQTT clients, a collector, the contract's JSON Schemas
- :mod:`mclz_testkit.netns`: a network namespace with a broker a test can cut off
- :mod:`mclz_testkit.pki`: a throw-away CA and certificates for TLS
- :mod:`mclz_testkit.rtsp`: an RTSP camera on loopback and a frame grabber
- :mod:`mclz_testkit.clips`: synthetic scenes and clips of real pictures
- :mod:`mclz_testkit.agentproc`: the agent daemon as a child process
- :mod:`mclz_testkit.factories`: the types of ``tests/conftest.py``'s factory fixtures
- :mod:`mclz_testkit.synthetic_model`: a tiny real ONNX detector of coloured patches
- :mod:`mclz_testkit.food_scenes`: synthetic-from-real food-zone scenes

This file imports nothing on purpose: each module pulls in only what it needs (PyAV, OpenCV,
paho, onnx).
"""
