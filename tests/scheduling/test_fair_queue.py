"""FairQueue, the synchronous core shared by the live Dispatcher and the simulator."""

from __future__ import annotations

import random

import pytest

from aiplus.scheduling.fair_queue import CANCELLED, DONE, QUEUED, RUNNING, FairQueue, Ticket


def serve(queue: FairQueue, ticket: Ticket, output: int) -> None:
    queue.output(ticket, output)
    queue.finish(ticket)


def drain(queue: FairQueue, output: int = 0, limit: int = 10_000) -> list[str]:
    """Run everything with one request at a time; the org of each dispatch, in order."""
    order = []
    while (ticket := queue.dispatch()) is not None and len(order) < limit:
        order.append(ticket.org_id)
        serve(queue, ticket, output)
    return order


def test_fcfs_dispatches_in_arrival_order():
    queue = FairQueue(1, policy="fcfs")
    for org in "AAAAB":
        queue.submit(org, 1.0, 10, 10)
    assert drain(queue, 10) == list("AAAAB")


def test_fair_interleaves_a_light_org_with_a_heavy_backlog():
    queue = FairQueue(1, policy="fair")
    for _ in range(10):
        queue.submit("A", 1.0, 10, 10)
    for _ in range(3):
        queue.submit("B", 1.0, 10, 10)
    order = drain(queue, 10)
    assert order[:6] == list("ABABAB")
    assert order[6:] == ["A"] * 7


def test_counters_charge_prompt_at_dispatch_and_output_per_token_divided_by_weight():
    queue = FairQueue(2, w_in=1.0, w_out=2.0)
    ticket = queue.submit("A", 2.0, 100, 50)
    queue.dispatch()
    assert queue.counter("A") == pytest.approx(50.0)
    queue.output(ticket, 10)
    assert queue.counter("A") == pytest.approx(60.0)
    queue.adjust_prompt(ticket, 120)
    assert queue.counter("A") == pytest.approx(70.0)
    assert queue.inflight_tokens == 170


def test_newcomer_on_an_idle_queue_is_lifted_to_the_in_flight_orgs_counter():
    """Org A runs alone with nothing queued (the gap of the paper's code): B must not get A's past work
    as credit."""
    queue = FairQueue(4)
    running = []
    for _ in range(40):  # A's history: 40 requests through, always with room to spare
        ticket = queue.submit("A", 1.0, 100, 100)
        assert queue.dispatch() is ticket
        queue.output(ticket, 100)
        running.append(ticket)
        if len(running) == 2:
            queue.finish(running.pop(0))
    assert queue.queued == 0 and queue.in_flight == 1
    a_counter = queue.counter("A")
    for _ in range(20):
        queue.submit("B", 1.0, 100, 100)
    assert queue.counter("B") == pytest.approx(a_counter)
    for _ in range(20):
        queue.submit("A", 1.0, 100, 100)
    queue.finish(running.pop())
    order = drain(queue, 100, limit=20)
    assert 8 <= order.count("B") <= 12  # an even split, not a burst of 20 for the newcomer


def test_returning_org_cannot_claim_credit_for_its_idle_time():
    queue = FairQueue(1)
    for _ in range(5):
        queue.submit("A", 1.0, 100, 100)
        queue.submit("B", 1.0, 100, 100)
    drain(queue, 100)  # both drain: all idle
    for _ in range(30):  # A alone for a long time
        queue.submit("A", 1.0, 100, 100)
    for _ in range(20):
        serve(queue, queue.dispatch(), 100)
    for _ in range(10):
        queue.submit("B", 1.0, 100, 100)
    order = drain(queue, 100, limit=10)
    assert 4 <= order.count("B") <= 6


def test_lift_applies_when_a_queue_drains_under_running_requests():
    """B keeps a request in flight while its queue is empty; A's service meanwhile is not B's credit."""
    queue = FairQueue(2)
    b_ticket = queue.submit("B", 1.0, 10, 10)
    queue.dispatch()
    for _ in range(50):
        queue.submit("A", 1.0, 100, 100)
    for _ in range(30):
        serve(queue, queue.dispatch(), 100)
    assert queue.counter("A") > 5_000 > queue.counter("B")
    queue.submit("B", 1.0, 10, 10)
    assert queue.counter("B") == pytest.approx(queue.counter("A"))
    queue.finish(b_ticket)


def test_alone_in_an_idle_system_lifts_to_the_last_served_org():
    queue = FairQueue(1)
    for _ in range(10):
        queue.submit("A", 1.0, 100, 100)
    drain(queue, 100)
    queue.submit("B", 1.0, 100, 100)
    assert queue.counter("B") == pytest.approx(queue.counter("A"))


def test_weights_one_two_three_four_share_dispatches_in_proportion():
    queue = FairQueue(1)
    for org, weight in (("w1", 1.0), ("w2", 2.0), ("w3", 3.0), ("w4", 4.0)):
        for _ in range(1_000):
            queue.submit(org, weight, 50, 50)
    order = drain(queue, 50, limit=1_000)
    shares = [order.count(f"w{w}") / len(order) for w in range(1, 5)]
    assert shares == pytest.approx([0.1, 0.2, 0.3, 0.4], abs=0.002)


def test_fair_service_difference_of_backlogged_orgs_stays_within_the_bound():
    rng = random.Random(7)
    capacity, longest_prompt, longest_output = 4, 500, 300
    queue = FairQueue(capacity)
    service = {"A": 0.0, "B": 0.0}
    for org in "AB":
        for _ in range(400):
            queue.submit(org, 1.0, rng.randint(1, longest_prompt), rng.randint(1, longest_output))
    running: list[list] = []  # [ticket, produced]
    worst = 0.0
    while queue.queued:  # both stay backlogged throughout
        while (ticket := queue.dispatch()) is not None:
            service[ticket.org_id] += ticket.prompt_tokens
            running.append([ticket, 0])
        for entry in running:  # one decode step
            ticket = entry[0]
            queue.output(ticket, 1)
            service[ticket.org_id] += 2
            entry[1] += 1
        for entry in [e for e in running if e[1] == e[0].max_tokens]:
            queue.finish(entry[0])
            running.remove(entry)
        worst = max(worst, abs(service["A"] - service["B"]))
    in_flight_tokens = capacity * longest_output
    assert worst <= 2 * max(1 * longest_prompt, 2 * in_flight_tokens)


def test_work_conserving_every_slot_busy_while_requests_wait():
    rng = random.Random(3)
    queue = FairQueue(3, policy="fair")
    running = []
    for step in range(2_000):
        if rng.random() < 0.6:
            queue.submit(
                rng.choice("ABCD"), rng.choice((0.25, 1.0, 2.0)), rng.randint(1, 300), rng.randint(1, 300)
            )
        while (ticket := queue.dispatch()) is not None:
            running.append(ticket)
        if queue.queued:
            assert queue.in_flight == queue.capacity, f"idle slot while {queue.queued} wait (step {step})"
        if running and rng.random() < 0.5:
            queue.finish(running.pop(rng.randrange(len(running))))


def test_token_cap_backfills_past_a_blocked_head_at_most_max_bypass_times():
    queue = FairQueue(8, policy="fcfs", max_inflight_tokens=1_000, max_bypass=2)
    first = queue.submit("A", 1.0, 300, 300)
    assert queue.dispatch() is first  # 600 of 1,000 in flight
    big = queue.submit("B", 1.0, 400, 400)  # needs 800: blocked
    smalls = [queue.submit("C", 1.0, 50, 50) for _ in range(4)]
    assert queue.dispatch() is smalls[0]  # backfill 1
    assert queue.dispatch() is smalls[1]  # backfill 2: 800 in flight
    assert queue.dispatch() is None  # the big one was passed over twice: hold its place
    queue.finish(smalls[0])
    assert queue.dispatch() is None  # 700 in flight: a small one would fit, the big one still waits first
    queue.finish(first)
    assert queue.dispatch() is big  # 100 + 800
    assert queue.dispatch() is smalls[2]  # 1,000: full
    assert queue.dispatch() is None


def test_strict_head_of_line_with_max_bypass_zero():
    queue = FairQueue(8, policy="fcfs", max_inflight_tokens=1_000, max_bypass=0)
    queue.submit("A", 1.0, 300, 300)
    queue.dispatch()
    queue.submit("B", 1.0, 400, 400)
    queue.submit("C", 1.0, 10, 10)
    assert queue.dispatch() is None


def test_a_request_larger_than_the_token_cap_runs_alone():
    queue = FairQueue(4, max_inflight_tokens=100)
    huge = queue.submit("A", 1.0, 500, 500)
    assert queue.dispatch() is huge
    queue.submit("B", 1.0, 10, 10)
    assert queue.dispatch() is None
    queue.finish(huge)
    assert queue.dispatch() is not None


def test_cancel_of_a_queued_request_leaves_no_trace():
    queue = FairQueue(1)
    running = queue.submit("A", 1.0, 10, 10)
    queue.dispatch()
    waiting = [queue.submit("B", 1.0, 10, 10) for _ in range(3)]
    assert queue.cancel(waiting[1])
    assert waiting[1].state == CANCELLED
    assert not queue.cancel(waiting[1])
    assert not queue.cancel(running)  # in flight: only finish frees it
    assert queue.queue_length("B") == 2 and queue.queued == 2
    queue.cancel(waiting[0])
    queue.cancel(waiting[2])
    assert queue.backlogged() == [] and queue.snapshot()["queued_by_org"] == {}
    queue.finish(running)
    assert queue.dispatch() is None
    assert queue.snapshot()["in_flight"] == 0


def test_finish_is_idempotent_and_frees_the_budget():
    queue = FairQueue(1, max_inflight_tokens=100)
    ticket = queue.submit("A", 1.0, 30, 30)
    assert ticket.state == QUEUED
    queue.dispatch()
    assert ticket.state == RUNNING
    queue.finish(ticket)
    queue.finish(ticket)
    assert ticket.state == DONE
    assert queue.in_flight == 0 and queue.inflight_tokens == 0


def test_snapshot_counts_per_org_and_tier():
    queue = FairQueue(1)
    queue.submit("A", 1.0, 10, 10, tier="standard")
    queue.submit("A", 1.0, 10, 10, tier="standard")
    queue.submit("B", 2.0, 10, 10, tier="lifeline")
    queue.dispatch()
    snap = queue.snapshot()
    assert snap["in_flight"] == 1 and snap["queued"] == 2
    assert snap["queued_by_org"] == {"A": 1, "B": 1}
    assert snap["queued_by_tier"] == {"standard": 1, "lifeline": 1}


def test_invalid_arguments_are_refused():
    with pytest.raises(ValueError):
        FairQueue(0)
    with pytest.raises(ValueError):
        FairQueue(1, policy="priority")
    with pytest.raises(ValueError):
        FairQueue(1).submit("A", 0.0, 1, 1)
