"""Just enough SIP for the example tests: REGISTER over a WebSocket (digest auth) and OPTIONS
over UDP. Not a SIP stack."""

import hashlib
import re
import secrets
import socket


def _md5(s):
    return hashlib.md5(s.encode()).hexdigest()


def _param(challenge, name):
    m = re.search(rf'{name}="?([^",]+)"?', challenge)
    return m.group(1) if m else None


def digest(challenge, method, uri, user, password):
    """The Authorization header value answering a `WWW-Authenticate: Digest ...` challenge."""
    realm, nonce, qop = _param(challenge, "realm"), _param(challenge, "nonce"), _param(challenge, "qop")
    ha1 = _md5(f"{user}:{realm}:{password}")
    ha2 = _md5(f"{method}:{uri}")
    if qop:
        cnonce, nc = secrets.token_hex(8), "00000001"
        response = _md5(f"{ha1}:{nonce}:{nc}:{cnonce}:auth:{ha2}")
        return (f'Digest username="{user}", realm="{realm}", nonce="{nonce}", uri="{uri}", '
                f'response="{response}", algorithm=MD5, qop=auth, nc={nc}, cnonce="{cnonce}"')
    response = _md5(f"{ha1}:{nonce}:{ha2}")
    return f'Digest username="{user}", realm="{realm}", nonce="{nonce}", uri="{uri}", response="{response}"'


def status(message):
    """The status code of a SIP response."""
    return int(message.split(" ", 2)[1])


def header(message, name):
    for line in message.split("\r\n"):
        key, _, value = line.partition(":")
        if key.strip().lower() == name.lower():
            return value.strip()
    return None


def register_request(domain, user, cseq, call_id, tag, authorization=None, expires=60):
    branch = "z9hG4bK" + secrets.token_hex(8)
    lines = [
        f"REGISTER sip:{domain} SIP/2.0",
        f"Via: SIP/2.0/WSS example.invalid;branch={branch}",
        "Max-Forwards: 70",
        f"From: <sip:{user}@{domain}>;tag={tag}",
        f"To: <sip:{user}@{domain}>",
        f"Call-ID: {call_id}",
        f"CSeq: {cseq} REGISTER",
        f"Contact: <sip:{user}@example.invalid;transport=ws>",
        f"Expires: {expires}",
    ]
    if authorization:
        lines.append(f"Authorization: {authorization}")
    lines += ["Content-Length: 0", "", ""]
    return "\r\n".join(lines)


def options_over_udp(host, port, timeout=3.0):
    """Sends OPTIONS to host:port over UDP; returns the response text."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        s.bind(("127.0.0.1", 0))
        local = s.getsockname()[1]
        branch = "z9hG4bK" + secrets.token_hex(8)
        msg = "\r\n".join([
            f"OPTIONS sip:{host}:{port} SIP/2.0",
            f"Via: SIP/2.0/UDP 127.0.0.1:{local};rport;branch={branch}",
            "Max-Forwards: 70",
            f"From: <sip:probe@127.0.0.1>;tag={secrets.token_hex(4)}",
            f"To: <sip:{host}:{port}>",
            f"Call-ID: {secrets.token_hex(8)}",
            "CSeq: 1 OPTIONS",
            "Content-Length: 0", "", "",
        ])
        s.sendto(msg.encode(), (host, port))
        data, _ = s.recvfrom(65535)
        return data.decode(errors="replace")
