"""`smartretry run` checks its ports before it starts anything: only a port in use counts as taken."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from streams.broker import BrokerUnavailable, LocalBroker, _two_ports, data_dir_in_use, free_port, port_free


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


def test_the_brokers_two_listeners_never_share_a_port(tmp_path: Path) -> None:
    # Kept from the last start, or asked for one of them: the controller moves; both asked for alike: refused.
    assert _two_ports(29092, 29092, None) != 29092
    assert _two_ports(29092, 29093, 29093) == 29093
    with pytest.raises(BrokerUnavailable, match="give them different ports"):
        _two_ports(29092, 29092, 29092)
    with pytest.raises(BrokerUnavailable, match="give them different ports"):
        LocalBroker.start(data_dir=tmp_path / "kafka", port=29092, controller_port=29092)
    # The data directory is let go: another start may take it.
    assert not data_dir_in_use(tmp_path / "kafka")
