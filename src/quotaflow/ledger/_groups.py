"""Group operations of the ledger: shared pools, members, caps, periods, soft mode."""

from __future__ import annotations

import heapq
from typing import Any

from mypy_extensions import trait

from quotaflow.ledger._base import (
    _UNITS,
    AMOUNT_MAX,
    Args,
    LedgerState,
    Result,
    _check_id,
)
from quotaflow.ledger.errors import (
    Conflict,
    InvalidRequest,
    NotFound,
)
from quotaflow.ledger.model import (
    NEVER_MS,
    PERIODS,
    UNIT_NAME,
    Group,
    Member,
    Origin,
    Status,
    Subscriber,
    Unit,
)
from quotaflow.ledger.periods import next_reset_ms


@trait
class GroupOps(LedgerState):
    """Mixed into Ledger: the operations on groups and their pools."""

    # ------------------------------------------------------------------ groups

    def group(self, group_id: object) -> Group:
        # Not typed str: a client's value of another type is an unknown group, not a TypeError.
        group = self.groups.get(group_id) if type(group_id) is str else None
        if group is None:
            raise NotFound(f"unknown group {group_id!r}")
        return group

    def _group_settings(self, group: Group, args: Args, now_ms: int) -> None:
        """Apply the settings an operation carries; all checked before anything changes."""
        period = args.get("period", group.period)
        if period not in PERIODS:
            raise InvalidRequest(f"period must be one of {list(PERIODS)}", field="period")
        day = args.get("reset_day", group.reset_day)
        valid_day = 0 <= day <= 6 if period == "weekly" else 1 <= day <= 28
        if type(day) is not int or not valid_day:
            raise InvalidRequest("reset_day: 1..28 monthly, 0..6 weekly", field="reset_day")
        restrict = args.get("restrict_below", group.restrict_below)
        if not isinstance(restrict, dict) or any(
            _UNITS.get(k) is None or type(v) is not int or v < 0 for k, v in restrict.items()
        ):
            raise InvalidRequest("restrict_below maps units to amounts", field="restrict_below")
        protected = args.get("protected_priority", group.protected_priority)
        if type(protected) is not int:
            raise InvalidRequest("protected_priority must be an integer")
        policy = args.get("policy", group.policy)
        if not isinstance(policy, dict):
            raise InvalidRequest("policy must be an object", field="policy")
        soft = self._soft_limits(group, args)
        if (period, day) != (group.period, group.reset_day) or group.next_reset_ms >= NEVER_MS:
            group.next_reset_ms = next_reset_ms(period, day, now_ms)
            if group.next_reset_ms < NEVER_MS:
                heapq.heappush(self._reset_heap, (group.next_reset_ms, group.id))
        group.period, group.reset_day = period, day
        group.restrict_below, group.protected_priority = dict(restrict), protected
        group.policy = dict(policy)
        group.soft_overspend_max = soft

    def _soft_limits(self, group: Group, args: Args) -> dict[str, int]:
        """Strict or soft mode; a credit line can change only while nothing was drawn on it."""
        mode = args.get("mode", "soft" if group.soft_overspend_max else "strict")
        if mode not in ("strict", "soft"):
            raise InvalidRequest("mode must be strict or soft", field="mode")
        limits = args.get("soft_overspend_max", group.soft_overspend_max)
        if not isinstance(limits, dict) or any(
            _UNITS.get(k) is None or type(v) is not int or not 0 < v <= AMOUNT_MAX
            for k, v in limits.items()
        ):
            raise InvalidRequest(
                "soft_overspend_max maps units to positive amounts", field="soft_overspend_max"
            )
        if mode == "soft" and not limits:
            raise InvalidRequest("soft mode needs soft_overspend_max", field="soft_overspend_max")
        wanted = dict(limits) if mode == "soft" else {}
        pool = self.subscribers.get(group.id)
        for unit in set(wanted) | set(group.soft_overspend_max):
            line = None if pool is None else pool.buckets.get(f"overdraft-{unit}")
            if (
                wanted.get(unit) != group.soft_overspend_max.get(unit)
                and line is not None
                and (line.amount != line.initial or line.reserved)
            ):
                raise Conflict(f"the {unit} credit line is in use; repay it first")
        return wanted

    def _sync_overdraft(self, group: Group) -> None:
        """Make the pool's credit-line buckets match the group's soft limits."""
        pool = self.subscribers[group.id]
        for b in [b for b in pool.buckets.values() if b.origin is Origin.OVERDRAFT]:
            if group.soft_overspend_max.get(UNIT_NAME[b.unit]) != b.initial:
                pool.counter(b.unit)["debited"] += b.amount  # an unused line is withdrawn
                del pool.buckets[b.id]
        for unit_name, limit in group.soft_overspend_max.items():
            bucket_id = f"overdraft-{unit_name}"
            if bucket_id not in pool.buckets:
                args = {"unit": unit_name, "amount": limit, "priority": 2**31 - 1}
                self._new_bucket(pool, bucket_id, args, Origin.OVERDRAFT)

    def _create_group(self, args: Args, now_ms: int) -> Result:
        gid = _check_id("group_id", args.get("group_id"))
        owner = self.subscriber(args.get("owner", ""))
        if gid in self.subscribers or gid in self.groups:
            raise Conflict(f"id {gid!r} is taken")
        if owner.group is not None or owner.kind != "subscriber":
            raise Conflict(f"owner {owner.id!r} already draws on group {owner.group!r}")
        group = Group(gid, owner.id, now_ms)
        self._group_settings(group, args, now_ms)
        self.subscribers[gid] = Subscriber(gid, {}, Status.ACTIVE, now_ms, kind="group")
        self.groups[gid] = group
        self._sync_overdraft(group)
        group.members[owner.id] = Member(owner.id, 0)
        owner.group = gid
        return group.to_json()

    def _update_group(self, args: Args, now_ms: int) -> Result:
        group = self.group(args.get("group_id", ""))
        probe = Group.from_json(group.to_json())
        self._group_settings(probe, args, now_ms)  # all checks pass before anything changes
        self._group_settings(group, args, now_ms)
        self._sync_overdraft(group)
        return group.to_json()

    @staticmethod
    def _member_settings(member: Member, args: Args) -> None:
        priority = args.get("priority", member.priority)
        if type(priority) is not int or not 0 <= priority < 2**31:
            raise InvalidRequest("priority must be an integer >= 0", field="priority")
        caps = args.get("caps", member.caps)
        if not isinstance(caps, dict) or any(
            _UNITS.get(k) is None or (v is not None and (type(v) is not int or v < 0))
            for k, v in caps.items()
        ):
            raise InvalidRequest("caps maps units to amounts per period", field="caps")
        member.priority = priority
        member.caps = {k: v for k, v in caps.items() if v is not None}

    def _add_member(self, args: Args, now_ms: int) -> Result:
        group = self.group(args.get("group_id", ""))
        sub = self.subscriber(args.get("subscriber_id", ""))
        if sub.kind != "subscriber":
            raise InvalidRequest("only subscribers can be members")
        if sub.group is not None:
            raise Conflict(f"{sub.id!r} already draws on group {sub.group!r}")
        member = Member(sub.id)
        self._member_settings(member, args)
        group.members[sub.id] = member
        sub.group = group.id
        return member.to_json()

    def _update_member(self, args: Args, now_ms: int) -> Result:
        group = self.group(args.get("group_id", ""))
        member = group.members.get(args.get("subscriber_id", ""))
        if member is None:
            raise NotFound("not a member of this group")
        self._member_settings(
            Member(member.subscriber_id, member.priority, dict(member.caps)), args
        )  # all checks pass before anything changes
        self._member_settings(member, args)
        return member.to_json()

    def _remove_member(self, args: Args, now_ms: int) -> Result:
        group = self.group(args.get("group_id", ""))
        sid = args.get("subscriber_id", "")
        if sid == group.owner:
            raise Conflict("the owner cannot leave the group")
        if group.members.pop(sid, None) is None:
            raise NotFound("not a member of this group")
        self.subscribers[sid].group = None
        return {"group_id": group.id, "removed": sid}

    def _group_reset(self, args: Args, now_ms: int) -> Result:
        """A new period: what members used from the pool counts from zero again."""
        group = self.group(args.get("group_id", ""))
        for member in group.members.values():
            member.used = {}
        group.next_reset_ms = next_reset_ms(group.period, group.reset_day, now_ms)
        if group.next_reset_ms < NEVER_MS:
            heapq.heappush(self._reset_heap, (group.next_reset_ms, group.id))
        return group.to_json()

    def pool_available(self, group_id: str, unit: Unit, now_ms: int) -> int:
        pool = self.subscribers[group_id]
        return sum(b.available for b in self._candidates(pool, unit, None, now_ms))

    def policy_counters(self, subscriber_id: str, now_ms: int) -> list[dict[str, Any]]:
        """Counter statuses a policy function reads: the member's caps and its pool's."""
        sub = self.subscriber(subscriber_id)
        group = None if sub.group is None else self.groups.get(sub.group)
        if group is None:
            return []
        counters: list[dict[str, Any]] = []
        member = group.members[sub.id]
        pool = self.subscribers[group.id]
        for unit in Unit:
            cap = member.caps.get(UNIT_NAME[unit])
            has_buckets = any(b.unit is unit for b in pool.buckets.values())
            if cap is None and not has_buckets:
                continue
            available = self.pool_available(group.id, unit, now_ms)
            threshold = group.restrict_below.get(UNIT_NAME[unit])
            if available == 0:
                status = "pool-exhausted"
            elif threshold is not None and available < threshold:
                status = "pool-low"
            else:
                status = "normal"
            counters.append(
                {
                    "id": f"{group.id}/pool/{UNIT_NAME[unit]}",
                    "owner": group.owner,
                    "unit": UNIT_NAME[unit],
                    "status": status,
                    "available": available,
                }
            )
            if cap is not None:
                used = member.used.get(UNIT_NAME[unit], 0) + member.held.get(UNIT_NAME[unit], 0)
                counters.append(
                    {
                        "id": f"{group.id}/member/{sub.id}/{UNIT_NAME[unit]}",
                        "unit": UNIT_NAME[unit],
                        "cap": cap,
                        "used": used,
                        "status": "member-cap-reached" if used >= cap else "normal",
                    }
                )
        return counters
