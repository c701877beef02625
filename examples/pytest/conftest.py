"""A pytest fixture that starts an astrtc test environment for the session and removes it after.

    def test_something(astrtc_env):
        astrtc_env["wss_url"], astrtc_env["endpoints"], astrtc_env["ca_file"], ...

ASTRTC names the astrtc binary (default: `astrtc` on PATH).
"""

import json
import os
import subprocess

import pytest

ASTRTC = os.environ.get("ASTRTC", "astrtc")


@pytest.fixture(scope="session")
def astrtc_env():
    out = subprocess.run([ASTRTC, "testenv", "up", "--json"], check=True, capture_output=True, text=True)
    env = json.loads(out.stdout)
    try:
        yield env
    finally:
        subprocess.run([ASTRTC, "testenv", "down", env["name"]], check=True)
