"""Addresses as servers print and bind them, IPv6 included."""

from __future__ import annotations

import socket

import pytest

from gristmill.net import base_url, free_port, url_host


def test_an_ipv6_host_is_bracketed_once_in_a_url() -> None:
    assert url_host("::1") == "[::1]" and url_host("[::1]") == "[::1]"
    assert url_host("127.0.0.1") == "127.0.0.1" and url_host("localhost") == "localhost"
    assert base_url("::1", 8765) == "http://[::1]:8765"
    assert base_url("[::1]", 8765) == "http://[::1]:8765"
    assert base_url("127.0.0.1", 8765) == "http://127.0.0.1:8765"


def test_a_free_port_can_be_bound() -> None:
    port = free_port()
    with socket.socket() as server:
        server.bind(("127.0.0.1", port))
    if socket.has_ipv6:
        try:
            port = free_port("::1")
        except OSError:
            pytest.skip("no IPv6 loopback here")
        with socket.socket(socket.AF_INET6) as server:
            server.bind(("::1", port))
