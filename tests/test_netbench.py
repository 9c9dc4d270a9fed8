"""scripts/netbench.py without building a lab (that needs root and is not part of make test)."""
import argparse

import pytest

import _netlab
import netbench


def test_without_root_it_says_so_in_one_line_and_exits_2(monkeypatch, capsys):
    monkeypatch.setattr(_netlab.os, "geteuid", lambda: 1000)
    assert netbench.main(["--network", "1gbit", "--workers", "2"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "root" in err and "\n" not in err


def test_rates_are_checked_before_anything_is_built(monkeypatch, capsys):
    monkeypatch.setattr(_netlab.os, "geteuid", lambda: 0)
    monkeypatch.setattr(_netlab.shutil, "which", lambda tool: f"/usr/sbin/{tool}")
    assert netbench.main(["--network", "1gbit,fast", "--workers", "2"]) == 2
    assert "'fast' is not a tc rate" in capsys.readouterr().err


def test_configurations_put_the_slow_link_on_the_last_worker():
    args = argparse.Namespace(network="none,1gbit", workers=[1, 2], slow="100mbit", security="none")
    rows = netbench.configurations(args)
    assert [label for label, _, _ in rows] == ["none x1", "none x2", "none x2, host 2 at 100mbit",
                                               "1gbit x1", "1gbit x2", "1gbit x2, host 2 at 100mbit"]
    assert rows[2][1] == ["none", "none", "100mbit"] and not any(keyed for _, _, keyed in rows)
    keyed = netbench.configurations(argparse.Namespace(network="1gbit", workers=[2], slow=None, security="none,curve"))
    assert [(label, curve) for label, _, curve in keyed] == [("1gbit x2", False), ("1gbit x2 curve", True)]


@pytest.mark.parametrize("rate, burst", [("1gbit", "1250000b"), ("100mbit", "125000b"), ("1mbit", "65536b")])
def test_the_token_bucket_holds_at_least_a_tick_of_traffic(rate, burst):
    assert _netlab._burst(rate) == burst


def test_the_scaling_model_charges_only_the_traffic_compute_cannot_hide():
    from _netmodel import step_s
    assert step_s(2, 1e15, 13.5e6, 0.7, 0.015, 0.357) == pytest.approx(0.715)     # a free link
    # 1 Gbit/s, 2 workers: layer 1 waits for the last piece; the top pieces' upload hides behind
    # layer 0's backward pass; layer 0's gradient pieces go after compute
    first, last = 2 * 0.357 * 13.5e6 / 125e6, 2 * 13.5e6 / 125e6
    assert step_s(2, 125e6, 13.5e6, 0.7, 0.015, 0.357) == pytest.approx(last + 0.7 - 0.17 * 0.7 + first + 0.015)
    # a relay chain: one copy per link, plus a piece's time per hop after the first
    piece = 1e6
    first, last = (0.357 * 13.5e6 + piece) / 125e6, (13.5e6 + piece) / 125e6
    assert step_s(2, 125e6, 13.5e6, 0.7, 0.015, 0.357, piece, check_s_per_byte=0) == pytest.approx(
        max(first + 0.17 * 0.7, last) + 0.7 - 0.17 * 0.7 + first + 0.015)
    # ...and its checks (SPEC.md 4.5): a hash of each parameter piece before it is forwarded, two of
    # each sum (the MAC in and out), per hop: the last hop of layer 0's sums is on the critical path
    check = 1e-9
    assert step_s(2, 125e6, 13.5e6, 0.7, 0.015, 0.357, piece, check) == pytest.approx(
        max(first + piece * check + 0.17 * 0.7, last + piece * check) + 0.7 - 0.17 * 0.7
        + first + 2 * piece * check + 0.015)
    assert _netlab.bytes_per_s("1gbit") == 125e6 and _netlab.bytes_per_s("100mbit") == 12.5e6
