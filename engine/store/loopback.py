"""Loopback ports for the stores this process starts: a free one, and whether the server
answering on one is up and is the process we started."""

from __future__ import annotations

import socket

_handed: set[int] = set()  # ports free_port() has answered in this process


def free_port() -> int:
    """A loopback port free now, and not one this process was given before: the kernel may
    hand out a port just closed again, and two nodes of a local cluster chosen in a row
    would then share it."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port not in _handed:
            _handed.add(port)
            return port


def answers_as(port: int, secret: str, pid: int) -> bool:
    """Whether the server on loopback `port` answers PING with PONG (after AUTH `secret`,
    if any) and is process `pid` (INFO server's process_id)."""
    password = secret.encode()
    auth = b"*2\r\n$4\r\nAUTH\r\n$%d\r\n%s\r\n" % (len(password), password) if secret else b""
    info = b"*2\r\n$4\r\nINFO\r\n$6\r\nserver\r\n"
    replies: list[bytes] = []
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.sendall(auth + b"PING\r\n" + info)
            got = b""
            while len(replies := _replies(got)) < (3 if secret else 2):
                chunk = s.recv(4096)
                if not chunk:
                    return False
                got += chunk
    except OSError:
        return False
    return replies[-2] == b"+PONG" and f"process_id:{pid}\r\n".encode() in replies[-1]


def _replies(got: bytes) -> list[bytes]:
    """The whole replies at the start of `got`, in order: a status or error line as it is
    ("+PONG", "-LOADING ..."), a bulk string as its body."""
    out: list[bytes] = []
    at = 0
    while (end := got.find(b"\r\n", at)) >= 0:
        head = got[at:end]
        if head[:1] == b"$" and head[1:].isdigit():
            size = int(head[1:])
            if len(got) < end + 2 + size + 2:
                break
            out.append(got[end + 2 : end + 2 + size])
            at = end + 2 + size + 2
        else:
            out.append(head)
            at = end + 2
    return out
