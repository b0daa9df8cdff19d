"""Lease arithmetic, pure: the outstanding leases never exceed what remains of the budget."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from kswifi.control.gateways.leases.rules import (
    Lease,
    fair_share,
    plan_session_leases,
    reclaim,
    remaining_budget,
    sole_carrier_grant,
    top_up,
    total_reserved,
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
        # Released (no longer carries the session); its 10 MB grant is held until it applied.
        assert plan["b"] == Lease(3 * MB, 3 * MB, held_bytes=10 * MB)
        # b may still serve up to 10 MB until it applied the release: a gets what is left.
        assert plan["a"] == Lease(10 * MB, 2 * MB, held_bytes=17 * MB)
        after = plan_session_leases(
            limit_bytes=20 * MB,
            used_total_bytes=5 * MB,
            leases={**plan, "b": plan["b"].applied()},
            carriers=["a"],
            requesting=["a"],
        )
        assert after["a"] == Lease(17 * MB, 2 * MB)  # cumulative: 20 MB minus b's 3 MB

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


class TestReclaim:
    def test_a_second_carrier_gets_nothing_until_the_first_applied_its_lowered_lease(
        self,
    ) -> None:
        # a carried the session alone and holds all 30 MB; b joins and asks.
        plan = plan_session_leases(
            limit_bytes=30 * MB,
            used_total_bytes=0,
            leases={"a": Lease(30 * MB, 0)},
            carriers=["a", "b"],
            requesting=["b"],
        )
        assert plan["a"] == Lease(15 * MB, 0, held_bytes=30 * MB)  # lowered, still held
        assert plan["b"] == Lease(0, 0)
        assert total_reserved(plan.values()) == 30 * MB
        # a applied its 15 MB; b asks again and gets the other half.
        applied = {**plan, "a": plan["a"].applied()}
        again = plan_session_leases(
            limit_bytes=30 * MB,
            used_total_bytes=0,
            leases=applied,
            carriers=["a", "b"],
            requesting=["b"],
        )
        assert again == {"a": Lease(15 * MB, 0), "b": Lease(15 * MB, 0)}

    def test_a_carrier_near_its_share_takes_nothing_from_the_others(self) -> None:
        # remaining 20 MB: a holds 12, b 8 (share 10): b gets nothing more, a keeps its lease.
        leases = {"a": Lease(12 * MB, 0), "b": Lease(8 * MB, 0)}
        plan = plan_session_leases(
            limit_bytes=20 * MB,
            used_total_bytes=0,
            leases=leases,
            carriers=["a", "b"],
            requesting=["b"],
        )
        assert plan == leases

    def test_reclaim_lowers_only_carriers_above_the_share(self) -> None:
        lowered = reclaim(
            {"a": Lease(50, 10), "b": Lease(20, 10), "c": Lease(90, 0)},
            carriers=["a", "b"],
            share_bytes=15,
        )
        assert lowered == {"a": Lease(25, 10, held_bytes=50)}

    def test_an_idle_carrier_gives_back_all_it_did_not_use(self) -> None:
        # b's phone went quiet with 15 MB unused; a's phone used its 15 MB and asks for more.
        leases = {"a": Lease(15 * MB, 15 * MB), "b": Lease(15 * MB, 2 * MB)}
        plan = plan_session_leases(
            limit_bytes=30 * MB,
            used_total_bytes=17 * MB,
            leases=leases,
            carriers=["a", "b"],
            requesting=["a"],
            idle=["b"],
        )
        assert plan["b"] == Lease(2 * MB, 2 * MB, held_bytes=15 * MB)  # all of it, once applied
        again = plan_session_leases(
            limit_bytes=30 * MB,
            used_total_bytes=17 * MB,
            leases={**plan, "b": plan["b"].applied()},
            carriers=["a", "b"],
            requesting=["a"],
            idle=["b"],
        )
        assert again["a"] == Lease(28 * MB, 15 * MB)  # the whole remainder: a is the only active

    def test_an_idle_carrier_that_wakes_up_asks_as_an_active_one(self) -> None:
        leases = {"a": Lease(28 * MB, 15 * MB), "b": Lease(2 * MB, 2 * MB)}
        still_idle = plan_session_leases(
            limit_bytes=30 * MB,
            used_total_bytes=17 * MB,
            leases=leases,
            carriers=["a", "b"],
            requesting=["b"],
            idle=["b"],
        )
        assert still_idle == leases  # an idle gateway polling gets nothing more
        plan = plan_session_leases(
            limit_bytes=30 * MB,
            used_total_bytes=17 * MB,
            leases=leases,
            carriers=["a", "b"],
            requesting=["b"],
        )
        # The remaining 13 MB are a's; b's share is half: a is lowered to 6.5 MB (held).
        assert plan["a"] == Lease(15 * MB + 6_500_000, 15 * MB, held_bytes=28 * MB)
        assert plan["b"] == Lease(2 * MB, 2 * MB)

    def test_raising_a_lowered_grant_back_needs_no_hold(self) -> None:
        lease = Lease(30, 0).regrant(10)
        assert lease == Lease(10, 0, held_bytes=30)
        assert lease.regrant(20) == Lease(20, 0, held_bytes=30)
        assert lease.regrant(30) == Lease(30, 0)
        assert lease.reserved_bytes == 30 and lease.outstanding_bytes == 10


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[int, list[tuple[str, str, int]]]:
    limit = draw(st.integers(min_value=0, max_value=10_000))
    operations = draw(
        st.lists(
            st.tuples(
                st.sampled_from(["request", "serve", "apply", "leave", "join", "rest"]),
                st.sampled_from(["a", "b", "c"]),
                st.integers(min_value=0, max_value=5_000),
            ),
            max_size=60,
        )
    )
    return limit, operations


class TestBudgetInvariant:
    @settings(max_examples=500)
    @given(scenarios())
    def test_reserved_never_exceeds_remaining_and_nothing_past_the_limit(
        self, scenario: tuple[int, list[tuple[str, str, int]]]
    ) -> None:
        limit, operations = scenario
        leases: dict[str, Lease] = {}
        carriers = {"a"}
        resting: set[str] = set()
        used_total = 0
        for operation, gateway, amount in operations:
            if operation == "rest":  # its phone went quiet (or woke up again)
                resting ^= {gateway}
            elif operation == "join":
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
                    idle=resting,
                )
            elif operation == "apply":  # the gateway applied its current (maybe lower) grant
                if gateway in leases:
                    leases[gateway] = leases[gateway].applied()
            else:  # the kernel lets a gateway serve at most the highest grant it enforces
                lease = leases.get(gateway, Lease(0, 0))
                served = min(amount, lease.reserved_bytes)
                leases[gateway] = Lease(
                    lease.granted_bytes, lease.used_bytes + served, lease.held_bytes
                )
                used_total += served
            assert total_reserved(leases.values()) <= remaining_budget(limit, used_total)
            assert used_total <= limit
            assert all(lease.granted_bytes >= 0 for lease in leases.values())

    @settings(max_examples=200)
    @given(
        limit=st.integers(min_value=1_000, max_value=10**9),
        carriers=st.integers(min_value=2, max_value=3),
    )
    def test_every_carrier_gets_a_share_once_reclaimed_leases_are_applied(
        self, limit: int, carriers: int
    ) -> None:
        # The first gateway held everything; each other carrier asks, all apply, they ask again.
        names = ["a", "b", "c"][:carriers]
        leases = {"a": Lease(limit, 0)}
        for _ in range(2):
            for name in names[1:]:
                leases = plan_session_leases(
                    limit_bytes=limit,
                    used_total_bytes=0,
                    leases=leases,
                    carriers=names,
                    requesting=[name],
                )
            leases = {name: lease.applied() for name, lease in leases.items()}
        share = fair_share(limit, 0, carriers)
        assert share is not None
        assert all(leases[name].outstanding_bytes >= share // 2 for name in names)
        assert total_reserved(leases.values()) <= limit
