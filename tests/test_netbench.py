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


@pytest.mark.parametrize("rate, burst", [("1gbit", "1250000b"), ("100mbit", "262144b"), ("1mbit", "262144b")])
def test_the_token_bucket_holds_at_least_a_tick_of_traffic(rate, burst):
    assert _netlab._burst(rate) == burst


def test_the_scaling_model_charges_only_the_traffic_compute_cannot_hide():
    from _netmodel import step_s
    assert step_s(2, 1e15, 13.5e6, 0.7, 0.015, 0.357) == pytest.approx(0.715)     # a free link
    # 1 Gbit/s, 2 workers: layer 1 waits for the last piece; the top pieces' upload hides behind
    # layer 0's backward pass; layer 0's gradient pieces go after compute
    first, last = 2 * 0.357 * 13.5e6 / 125e6, 2 * 13.5e6 / 125e6
    assert step_s(2, 125e6, 13.5e6, 0.7, 0.015, 0.357) == pytest.approx(last + 0.7 - 0.17 * 0.7 + first + 0.015)
    # a relay chain: one copy per link, plus a piece's time per hop after the first on the way out;
    # on the way back the hops hide behind the parameters' skew (each worker finishes a hop later)
    piece = 1e6
    first, last, back = (0.357 * 13.5e6 + piece) / 125e6, (13.5e6 + piece) / 125e6, 0.357 * 13.5e6 / 125e6
    assert step_s(2, 125e6, 13.5e6, 0.7, 0.015, 0.357, piece, check_s_per_byte=0) == pytest.approx(
        max(first + 0.17 * 0.7, last) + 0.7 - 0.17 * 0.7 + back + 0.015)
    # ...and its checks (SPEC.md 4.5): a hash of each parameter piece before it is forwarded, two of
    # each sum (the MAC in and out, one of them hidden by the skew), per hop
    check = 1e-9
    assert step_s(2, 125e6, 13.5e6, 0.7, 0.015, 0.357, piece, check) == pytest.approx(
        max(first + piece * check + 0.17 * 0.7, last + piece * check) + 0.7 - 0.17 * 0.7
        + back + piece * check + 0.015)
    # 25 workers: the hops out grow with the piece, the way back does not
    small, large = (step_s(25, 125e6, 13.5e6, 0.086, 0.001, 0.357, b, 0) for b in (0.25e6, 1e6))
    assert large - small == pytest.approx(24 * 0.75e6 / 125e6)
    # a narrow wire whose chain sums travel in the run's dtype: twice the bytes back, not out
    narrow, sums_wide = (step_s(25, 125e6, 6.75e6, 0.086, 0.001, 0.357, 0.5e6, 0, back) for back in (None, 13.5e6))
    assert sums_wide - narrow == pytest.approx(6.75e6 / 125e6)
    assert _netlab.bytes_per_s("1gbit") == 125e6 and _netlab.bytes_per_s("100mbit") == 12.5e6


def test_the_emulation_stretches_time_alike_for_links_and_compute():
    from _emulation import Emulation, group_sizes
    emulation = Emulation(10, "4:0.2")
    assert emulation.rate("1gbit") == "100000kbit" and emulation.rate("none") == "none"
    figures = {key: 1.0 for key in ("step_s", "out_s", "queued_s", "compute_s", "in_s", "update_s", "idle_s")}
    real = emulation.undilated({**figures, "chars_per_s": 250.0, "mean_chars_per_s": 200.0, "relayed_steps": "3/3"})
    assert real["step_s"] == 0.1 and real["chars_per_s"] == 2500.0 and real["relayed_steps"] == "3/3"
    assert real["mean_chars_per_s"] == 2000.0
    assert group_sizes(25, [1, 2, 8, 25]) == [1, 3, 4, 12, 13, 25]
    assert "--audit-share" in emulation.coordinator_flags()         # the referee would check waits


def test_emulated_compute_times_follow_the_measured_sizes():
    from worker.emulated import compute_times, seconds_for
    times = compute_times("1:0.1,4:0.25,13:0.6")
    assert seconds_for(times, 4) == 0.25 and abs(seconds_for(times, 2) - 0.15) < 1e-12
    assert abs(seconds_for(times, 25) - (0.25 + 0.35 * 21 / 9)) < 1e-12      # beyond: the nearest two


@pytest.mark.timeout(120)
def test_emulated_workers_speak_the_real_protocol_and_wait_their_dilated_time(corpus, tmp_path):
    """No lab: a coordinator and 3 emulated workers on loopback, relay chains and all."""
    import helpers
    coordinator, endpoint = helpers.start_coordinator(corpus, str(tmp_path), 6, "--chunks", 6, "--dilation", 2,
                                                      "--dtype", "float32", workers=3)
    workers = [helpers.spawn("worker", "--connect", endpoint, "--emulate-compute", "2:0.05", "--dilation", 2,
                             log_path=str(tmp_path / f"w{k}.log")) for k in range(3)]
    try:
        assert coordinator.wait(timeout=90) == 0
    finally:
        helpers.stop_all(coordinator, *workers)
    steps = [m for m in helpers.metrics(str(tmp_path)) if "loss" in m]
    assert len(steps) == 6 and all(0.09 <= m["compute_s"] < 0.5 for m in steps)     # 2 x 0.05 s, dilated
    assert sum(m["relayed"] for m in steps) >= 1


def test_the_phases_report_the_median_step_and_the_mean_over_the_timed_steps(tmp_path):
    """One slow step in four (a slow host's probe) moves the mean, not the median."""
    import json
    seconds = [1.0, 1.0, 1.0, 3.0]
    with open(tmp_path / "metrics.jsonl", "w") as out:
        for step, step_s in enumerate(seconds, 1):
            out.write(json.dumps({"step": step, "loss": 1.0, "step_s": step_s, "update_s": 0.01,
                                  "chars_per_s": 3000 / step_s}) + "\n")
    with open(tmp_path / "coordinator.trace", "w") as out:
        out.writelines(json.dumps({"step": s, "dispatched": 10.0 * s, "gathered": 10.0 * s + t}) + "\n"
                       for s, t in enumerate(seconds))
    with open(tmp_path / "worker1.trace", "w") as out:
        out.writelines(json.dumps({"step": s, "received": 10.0 * s, "computed": 10.0 * s + t - 0.1,
                                   "compute_s": t - 0.2, "waited_s": 0.0}) + "\n" for s, t in enumerate(seconds))
    figures = netbench.phases(str(tmp_path), warmup=0)
    assert figures["chars_per_s"] == 3000.0 and figures["mean_chars_per_s"] == 12000 / 6
