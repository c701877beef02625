"""Tests against a fresh astrtc test environment (the `astrtc_env` fixture in conftest.py)."""

import secrets
import ssl

from websockets.sync.client import connect

import sip


def webrtc_endpoint(env):
    return next(e for e in env["endpoints"] if e["kind"] == "webrtc")


def test_a_webrtc_endpoint_registers_over_wss_with_digest_auth(astrtc_env):
    endpoint = webrtc_endpoint(astrtc_env)
    user, domain = endpoint["id"], "localhost"
    tls = ssl.create_default_context(cafile=astrtc_env["ca_file"])
    with connect(astrtc_env["wss_url"], subprotocols=["sip"], ssl=tls, open_timeout=10) as ws:
        call_id, tag = secrets.token_hex(8), secrets.token_hex(4)
        ws.send(sip.register_request(domain, user, 1, call_id, tag))
        challenge = ws.recv(timeout=10)
        assert sip.status(challenge) == 401
        auth = sip.digest(sip.header(challenge, "WWW-Authenticate"), "REGISTER", f"sip:{domain}", user,
                          endpoint["password"])
        ws.send(sip.register_request(domain, user, 2, call_id, tag, authorization=auth))
        answer = ws.recv(timeout=10)
        assert sip.status(answer) == 200, answer


def test_a_wrong_password_is_refused(astrtc_env):
    endpoint = webrtc_endpoint(astrtc_env)
    tls = ssl.create_default_context(cafile=astrtc_env["ca_file"])
    with connect(astrtc_env["wss_url"], subprotocols=["sip"], ssl=tls, open_timeout=10) as ws:
        call_id, tag = secrets.token_hex(8), secrets.token_hex(4)
        ws.send(sip.register_request("localhost", endpoint["id"], 1, call_id, tag))
        challenge = ws.recv(timeout=10)
        auth = sip.digest(sip.header(challenge, "WWW-Authenticate"), "REGISTER", "sip:localhost", endpoint["id"],
                          "not-the-password")
        ws.send(sip.register_request("localhost", endpoint["id"], 2, call_id, tag, authorization=auth))
        assert sip.status(ws.recv(timeout=10)) in (401, 403)


def test_sip_over_udp_answers_options(astrtc_env):
    host, port = astrtc_env["sip"].rsplit(":", 1)
    answer = sip.options_over_udp(host, int(port))
    assert answer.startswith("SIP/2.0 "), answer
