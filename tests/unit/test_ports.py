"""`smartretry run` checks its ports before it starts anything: only a port in use counts as taken."""

from __future__ import annotations

import socket

from streams.broker import free_port, port_free


def test_a_port_in_use_is_taken_and_a_free_one_is_free() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        taken = listener.getsockname()[1]
        assert not port_free("127.0.0.1", taken)
    assert port_free("127.0.0.1", free_port())


def test_a_host_the_check_cannot_tell_about_is_left_to_the_server_to_refuse() -> None:
    # An unresolvable name, or an address family this machine lacks, is no "port taken".
    assert port_free("no-such-host.invalid", free_port())
    assert port_free("localhost", free_port())
