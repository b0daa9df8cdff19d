"""Lease arithmetic, pure: the outstanding leases never exceed what remains of the budget."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from kswifi.control.gateways.leases import (
    Lease,
    fair_share,
    plan_session_leases,
    remaining_budget,
    sole_carrier_grant,
    top_up,
    total_outstanding,
)

MB = 1_000_000


class TestSoleCarrier:
    def test_lease_is_the_whole_limit_at_first(self) -> None:
        plan = plan_session_leases(
            limit_bytes=20 * MB, used_total_bytes=0, leases={}, carriers=["a"], requesting=["a"]
        )
        assert plan == {"a": Lease(20 * MB, 0)}

    def test_lease_is_limit_minus_what_other_gateways_used(self) -> None:
        # 3 MB served on b before the device moved to a; a served 2 MB.
        leases = {"a": Lease(17 * MB, 2 * MB), "b": Lease(10 * MB, 3 * MB)}
        plan = plan_session_leases(
            limit_bytes=20 * MB,
            used_total_bytes=5 * MB,
            leases=leases,
            carriers=["a"],
            requesting=["a"],
        )
        assert plan["b"] == Lease(3 * MB, 3 * MB)  # released: no longer carries the session
        assert plan["a"] == Lease(17 * MB, 2 * MB)  # cumulative: 20 MB minus b's 3 MB

    def test_exhausted_session_gets_nothing_more(self) -> None:
        plan = plan_session_leases(
            limit_bytes=10,
            used_total_bytes=10,
            leases={"a": Lease(10, 10)},
            carriers=["a"],
            requesting=["a"],
        )
        assert plan["a"].outstanding_bytes == 0

    def test_a_non_carrier_asking_gets_nothing(self) -> None:
        plan = plan_session_leases(
            limit_bytes=10, used_total_bytes=0, leases={}, carriers=["a"], requesting=["b"]
        )
        assert plan == {}


class TestSharedSession:
    def test_two_carriers_share_the_remainder(self) -> None:
        plan = plan_session_leases(
            limit_bytes=10 * MB,
            used_total_bytes=0,
            leases={},
            carriers=["a", "b"],
            requesting=["a", "b"],
        )
        assert plan == {"a": Lease(5 * MB, 0), "b": Lease(5 * MB, 0)}

    def test_top_up_is_capped_by_what_others_hold(self) -> None:
        granted = top_up(
            limit_bytes=10 * MB,
            used_total_bytes=4 * MB,
            own=Lease(5 * MB, 4 * MB),
            others=[Lease(5 * MB, 0)],
            share_bytes=3 * MB,
        )
        # remaining 6 MB, b holds 5 MB: a may hold 1 MB more than it used.
        assert granted == 5 * MB

    def test_top_up_is_idempotent(self) -> None:
        first = top_up(
            limit_bytes=100, used_total_bytes=0, own=Lease(0, 0), others=[], share_bytes=30
        )
        second = top_up(
            limit_bytes=100, used_total_bytes=0, own=Lease(first, 0), others=[], share_bytes=30
        )
        assert first == second == 30

    def test_fair_share(self) -> None:
        assert fair_share(10, 0, 1) is None
        assert fair_share(10, 1, 2) == 5
        assert fair_share(10, 0, 3) == 4
        assert remaining_budget(10, 12) == 0

    @given(
        limit=st.integers(min_value=0, max_value=10**12),
        used_total=st.integers(min_value=0, max_value=10**12),
        granted=st.integers(min_value=0, max_value=10**12),
        own_used=st.integers(min_value=0, max_value=10**12),
    )
    def test_sole_carrier_fast_path_matches_the_general_plan(
        self, limit: int, used_total: int, granted: int, own_used: int
    ) -> None:
        plan = plan_session_leases(
            limit_bytes=limit,
            used_total_bytes=used_total,
            leases={"a": Lease(granted, own_used)},
            carriers=["a"],
            requesting=["a"],
        )
        assert plan["a"].granted_bytes == sole_carrier_grant(limit, used_total, own_used)


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[int, list[tuple[str, str, int]]]:
    limit = draw(st.integers(min_value=0, max_value=10_000))
    operations = draw(
        st.lists(
            st.tuples(
                st.sampled_from(["request", "serve", "leave", "join"]),
                st.sampled_from(["a", "b", "c"]),
                st.integers(min_value=0, max_value=5_000),
            ),
            max_size=60,
        )
    )
    return limit, operations


class TestBudgetInvariant:
    @settings(max_examples=300)
    @given(scenarios())
    def test_outstanding_never_exceeds_remaining_and_nothing_past_the_limit(
        self, scenario: tuple[int, list[tuple[str, str, int]]]
    ) -> None:
        limit, operations = scenario
        leases: dict[str, Lease] = {}
        carriers = {"a"}
        used_total = 0
        for operation, gateway, amount in operations:
            if operation == "join":
                carriers.add(gateway)
            elif operation == "leave":
                carriers.discard(gateway)
            elif operation == "request":
                leases = plan_session_leases(
                    limit_bytes=limit,
                    used_total_bytes=used_total,
                    leases=leases,
                    carriers=sorted(carriers),
                    requesting=[gateway],
                )
            else:  # the kernel lets a gateway serve at most its outstanding lease
                lease = leases.get(gateway, Lease(0, 0))
                served = min(amount, lease.outstanding_bytes)
                leases[gateway] = Lease(lease.granted_bytes, lease.used_bytes + served)
                used_total += served
            assert total_outstanding(leases.values()) <= remaining_budget(limit, used_total)
            assert used_total <= limit
            assert all(lease.granted_bytes >= 0 for lease in leases.values())
