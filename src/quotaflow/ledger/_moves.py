"""Moving quota in the ledger: transfers, vouchers, providers, the broker, postpaid, interop."""

from __future__ import annotations

import heapq
from typing import Any

from mypy_extensions import trait

from quotaflow.ledger._base import (
    _UNITS,
    AMOUNT_MAX,
    PROVIDERS_MAX,
    Args,
    LedgerState,
    Result,
    _ceil_div,
    _check_amount,
    _check_id,
    _month,
    _unit,
)
from quotaflow.ledger.errors import (
    Conflict,
    InvalidRequest,
    LimitReached,
    NoCredit,
    NotFound,
)
from quotaflow.ledger.model import (
    NEVER_MS,
    UNIT_NAME,
    Bucket,
    Origin,
    Status,
    Subscriber,
    Unit,
)
from quotaflow.ledger.transfers import (
    DAY_MS,
    Offer,
    Transfer,
    Voucher,
    already_reversed,
    check_limits,
    check_parties,
    gift_expiry,
    no_such_voucher,
    plan_transfer,
    transfer_unknown,
)


@trait
class MovingOps(LedgerState):
    """Mixed into Ledger: every operation that moves credit between accounts."""

    # ------------------------------------------------------------------ moving quota

    def _transfer(self, args: Args, now_ms: int) -> Result:
        """Give free credit to another subscriber, at once and whole, or refuse saying why."""
        tid = _check_id("transfer_id", args.get("transfer_id"))
        if tid in self.transfers:
            raise Conflict(f"transfer id {tid!r} is taken")
        if len(self.transfers) >= self.limits.transfers_max:
            raise LimitReached("transfer table full", limit=self.limits.transfers_max)
        giver = self._subject({"subscriber_id": args.get("from", "")}, now_ms)
        receiver = self._subject({"subscriber_id": args.get("to", "")}, now_ms)
        check_parties(giver, receiver)
        unit = _unit(args.get("unit"))
        amount = _check_amount("amount", args.get("amount"))
        day_key = f"{giver.id}|{UNIT_NAME[unit]}|{now_ms // DAY_MS}"
        check_limits(self.limits.transfers, giver, unit, amount, self._sent.get(day_key, 0), now_ms)
        plan = plan_transfer(giver, unit, amount, now_ms)
        expiries = [gift_expiry(args, b) for b, _ in plan]  # all checked before anything moves
        if len(receiver.buckets) + len(plan) > self.limits.buckets_per_subscriber_max:
            raise LimitReached(
                "the receiver has too many buckets", limit=self.limits.buckets_per_subscriber_max
            )
        gifts = self._move(giver, receiver, unit, plan, expiries, tid, now_ms)
        self._sent[day_key] = self._sent.get(day_key, 0) + amount
        transfer = Transfer(tid, giver.id, receiver.id, unit, amount, now_ms, gifts)
        if args.get("donation"):
            transfer.donation = True
            transfer.reward = self._reward(giver, unit, amount, tid)
        self.transfers[tid] = transfer
        return transfer.to_json()

    def _reward(self, donor: Subscriber, unit: Unit, amount: int, tid: str) -> dict[str, Any]:
        """A donor's reward by the configured rule: new credit in a bucket of its own."""
        rule = self.limits.transfers.rewards.get(UNIT_NAME[unit])
        if not rule:
            return {"unit": None, "amount": 0}
        earned = amount // int(rule["per_units"]) * int(rule["amount"])
        reward_unit = str(rule["reward_unit"])
        if earned:
            self._new_bucket(
                donor, f"reward-{tid}", {"unit": reward_unit, "amount": earned}, Origin.PROMOTION
            )
        return {"unit": reward_unit, "amount": earned}

    def transfer_report(self, transfer_id: str) -> dict[str, Any]:
        """A transfer, with how much of what was given the receiver has used so far."""
        transfer = self.transfers.get(transfer_id)
        if transfer is None:
            raise transfer_unknown(transfer_id)
        holder = self.subscribers.get(transfer.receiver)
        left = 0
        if holder is not None:
            left = sum(holder.buckets[b].amount for b in transfer.buckets if b in holder.buckets)
        returned = 0
        if transfer.reversed_by is not None and transfer.reversed_by in self.transfers:
            returned = self.transfers[transfer.reversed_by].amount
        return {
            **transfer.to_json(),
            "left": left,
            "used": max(0, transfer.amount - left - returned),
        }

    def _move(
        self,
        giver: Subscriber,
        receiver: Subscriber,
        unit: Unit,
        plan: list[tuple[Bucket, int]],
        expiries: list[int],
        tid: str,
        now_ms: int,
    ) -> list[str]:
        gifts: list[str] = []
        for n, ((source, take), expires) in enumerate(zip(plan, expiries, strict=True)):
            source.amount -= take
            bucket_id = f"gift-{tid}-{n}"
            self._new_bucket(
                receiver,
                bucket_id,
                {
                    "unit": UNIT_NAME[unit],
                    "amount": take,
                    "expires_at_ms": None if expires >= NEVER_MS else expires,
                },
                Origin.GIFT,
            )
            gifts.append(bucket_id)
        total = sum(take for _, take in plan)
        giver.counter(unit)["transferred_out"] += total
        # _new_bucket counted the gifts as credited: they are transferred in, not new credit.
        receiver.counter(unit)["credited"] -= total
        receiver.counter(unit)["transferred_in"] += total
        return gifts

    def _reverse_transfer(self, args: Args, now_ms: int) -> Result:
        """Give back what is left of a transfer's gift buckets; itself a transfer."""
        original = self.transfers.get(args.get("transfer_id", ""))
        if original is None:
            raise transfer_unknown(str(args.get("transfer_id")))
        if original.reversed_by is not None:
            raise already_reversed(original)
        rid = _check_id("reversal_id", args.get("reversal_id"))
        if rid in self.transfers:
            raise Conflict(f"transfer id {rid!r} is taken")
        holder = self._subject({"subscriber_id": original.receiver}, now_ms)
        back_to = self._subject({"subscriber_id": original.giver}, now_ms)
        left = sum(
            holder.buckets[b].available
            for b in original.buckets
            if b in holder.buckets and holder.buckets[b].usable(now_ms)
        )
        if left == 0:
            raise NoCredit("nothing of the transfer is left to give back")
        plan = plan_transfer(holder, original.unit, left, now_ms, only=original.buckets)
        expiries = [b.expires_at_ms for b, _ in plan]
        gifts = self._move(holder, back_to, original.unit, plan, expiries, rid, now_ms)
        reversal = Transfer(rid, holder.id, back_to.id, original.unit, left, now_ms, gifts)
        self.transfers[rid] = reversal
        original.reversed_by = rid
        return {**reversal.to_json(), "reverses": original.id}

    def _set_providers(self, args: Args, now_ms: int) -> Result:
        """Who pays, in order and within a monthly limit, when the subscriber runs low."""
        sub = self._subject(args, now_ms)
        raw = args.get("providers")
        if not isinstance(raw, list) or len(raw) > PROVIDERS_MAX:
            raise InvalidRequest(
                f"providers must be a list of at most {PROVIDERS_MAX}", field="providers"
            )
        providers: list[dict[str, Any]] = []
        for n, p in enumerate(raw):
            where = f"providers[{n}]"
            if not isinstance(p, dict) or set(p) - {"id", "limit"}:
                raise InvalidRequest(f"{where} needs id and limit only", field="providers")
            provider = self.subscriber(_check_id(f"{where}.id", p.get("id")))
            if provider.id == sub.id or provider.kind != "subscriber":
                raise InvalidRequest(f"{where} cannot provide", field="providers")
            limit = p.get("limit")
            if (
                not isinstance(limit, dict)
                or not limit
                or any(
                    _UNITS.get(k) is None or type(v) is not int or not 0 < v <= AMOUNT_MAX
                    for k, v in limit.items()
                )
            ):
                raise InvalidRequest(
                    f"{where}.limit maps units to monthly amounts", field="providers"
                )
            providers.append({"id": provider.id, "limit": dict(limit)})
        sub.providers = providers
        return {"subscriber_id": sub.id, "providers": [dict(p) for p in providers]}

    def _provider_topup(self, args: Args, now_ms: int) -> Result:
        """Top the subscriber up from its providers, in order, each within what it allows this
        month and what it has free; refused (no_credit) when none can give anything."""
        sub = self._subject(args, now_ms)
        unit = _unit(args.get("unit"))
        want = _check_amount("amount", args.get("amount"))
        tid = _check_id("topup_id", args.get("topup_id"))
        month = _month(now_ms)
        given: list[dict[str, Any]] = []
        for n, p in enumerate(sub.providers):
            if want == 0:
                break
            provider = self.subscribers.get(p["id"])
            if provider is None or provider.status is Status.BARRED:
                continue
            key = f"prov|{sub.id}|{provider.id}|{UNIT_NAME[unit]}|{month}"
            room = p["limit"].get(UNIT_NAME[unit], 0) - self._sent.get(key, 0)
            free = sum(
                b.available
                for b in provider.buckets.values()
                if b.unit is unit
                and not b.rating_groups
                and b.usable(now_ms)
                and b.origin is not Origin.OVERDRAFT
            )
            take = min(want, room, free)
            if take <= 0:
                continue
            plan = plan_transfer(provider, unit, take, now_ms)
            expiries = [b.expires_at_ms for b, _ in plan]
            self._move(provider, sub, unit, plan, expiries, f"{tid}-{n}", now_ms)
            self._sent[key] = self._sent.get(key, 0) + take
            given.append({"provider": provider.id, "amount": take})
            want -= take
        if not given:
            raise NoCredit("no provider could give anything", unit=UNIT_NAME[unit])
        return {
            "subscriber_id": sub.id,
            "unit": UNIT_NAME[unit],
            "given": given,
            "amount": sum(g["amount"] for g in given),
        }

    def _set_postpaid(self, args: Args, now_ms: int) -> Result:
        """A postpaid account: money it spends beyond its balance draws on a credit line
        (`overdraft-money`) up to the credit limit; what it owes is what the line misses."""
        sub = self._subject(args, now_ms)
        if sub.kind != "subscriber":
            raise InvalidRequest("only a subscriber can be postpaid")
        limit = _check_amount("credit_limit_micros", args.get("credit_limit_micros"))
        line = sub.buckets.get("overdraft-money")
        if line is not None:
            if line.amount != line.initial or line.reserved:
                raise Conflict("the credit line is in use; settle the bill first")
            sub.counter(Unit.MONEY)["debited"] += line.amount
            del sub.buckets[line.id]
        self._new_bucket(
            sub,
            "overdraft-money",
            {"unit": "money", "amount": limit, "priority": 2**31 - 1},
            Origin.OVERDRAFT,
        )
        return {"subscriber_id": sub.id, "credit_limit_micros": limit, "owed_micros": 0}

    def _allowance_transfer(self, args: Args, now_ms: int) -> Result:
        """A postpaid account gives part of its allowance to a prepaid subscriber and is
        credited with its money value (priced by the rater; first repaying what it owes)."""
        tid = _check_id("transfer_id", args.get("transfer_id"))
        if tid in self.transfers:
            raise Conflict(f"transfer id {tid!r} is taken")
        giver = self._subject({"subscriber_id": args.get("from", "")}, now_ms)
        if "overdraft-money" not in giver.buckets:
            raise InvalidRequest("the giver is not a postpaid account", field="from")
        value = _check_amount("value_micros", args.get("value_micros"), zero_ok=True)
        result = self._transfer({**args, "transfer_id": tid}, now_ms)
        if value:
            credit = self._topup(
                {
                    "subscriber_id": giver.id,
                    "unit": "money",
                    "amount": value,
                    "topup_id": f"value-{tid}",
                },
                now_ms,
            )
            result["repaid_micros"] = credit.get("repaid", 0)
        result["value_micros"] = value
        return result

    def _account_of(self, account_id: str, kind: str, now_ms: int) -> Subscriber:
        account = self.subscribers.get(account_id)
        if account is None:
            account = Subscriber(account_id, {}, Status.ACTIVE, now_ms, kind=kind)
            self.subscribers[account_id] = account
        return account

    def _interop_hold(self, args: Args, now_ms: int) -> Result:
        """Step 1 of a transfer to another operator: the quota leaves the giver into escrow."""
        tid = _check_id("transfer_id", args.get("transfer_id"))
        if tid in self.remote or tid in self.transfers:
            raise Conflict(f"transfer id {tid!r} is taken")
        giver = self._subject({"subscriber_id": args.get("from", "")}, now_ms)
        if giver.kind != "subscriber" or giver.status is Status.BARRED:
            raise InvalidRequest("only an active subscriber can give", field="from")
        unit = _unit(args.get("unit"))
        amount = _check_amount("amount", args.get("amount"))
        operator = _check_id("operator", args.get("operator"))
        to = _check_id("to", args.get("to"))
        day_key = f"{giver.id}|{UNIT_NAME[unit]}|{now_ms // DAY_MS}"
        check_limits(self.limits.transfers, giver, unit, amount, self._sent.get(day_key, 0), now_ms)
        plan = plan_transfer(giver, unit, amount, now_ms)
        escrow = self._account_of("escrow:interop", "escrow", now_ms)
        expiries = [b.expires_at_ms for b, _ in plan]
        buckets = self._move(giver, escrow, unit, plan, expiries, tid, now_ms)
        self._sent[day_key] = self._sent.get(day_key, 0) + amount
        record = {
            "id": tid,
            "from": giver.id,
            "to": to,
            "operator": operator,
            "unit": UNIT_NAME[unit],
            "amount": amount,
            "state": "held",
            "buckets": buckets,
            "at_ms": now_ms,
        }
        self.remote[tid] = record
        return dict(record, buckets=list(buckets))

    def _remote_held(self, args: Args) -> dict[str, Any]:
        record = self.remote.get(args.get("transfer_id", ""))
        if record is None:
            raise NotFound(f"no transfer to another operator {args.get('transfer_id')!r}")
        if record["state"] != "held":
            raise Conflict(f"transfer {record['id']!r} is already {record['state']}")
        return record

    def _release_escrow(self, record: dict[str, Any], to: Subscriber, now_ms: int) -> None:
        escrow = self.subscribers["escrow:interop"]
        unit = Unit(record["unit"])
        plan = [
            (escrow.buckets[b], escrow.buckets[b].amount)
            for b in record["buckets"]
            if b in escrow.buckets and escrow.buckets[b].amount
        ]
        expiries = [b.expires_at_ms for b, _ in plan]
        self._move(escrow, to, unit, plan, expiries, f"{record['id']}-{record['state']}", now_ms)
        for b, _ in plan:
            del escrow.buckets[b.id]  # emptied; the escrow keeps no husks

    def _interop_settle(self, args: Args, now_ms: int) -> Result:
        """Step 2, yes: the other operator credited its subscriber; the escrow goes to the
        account of what was sent to that operator."""
        record = self._remote_held(args)
        record["state"] = "delivered"
        settled = self._account_of(f"operator:{record['operator']}", "operator", now_ms)
        self._release_escrow(record, settled, now_ms)
        return dict(record, buckets=list(record["buckets"]))

    def _interop_cancel(self, args: Args, now_ms: int) -> Result:
        """Step 2, no: the other operator refused for good; the quota goes back to the giver."""
        record = self._remote_held(args)
        record["state"] = "refused"
        record["reason"] = str(args.get("reason", ""))[:200]
        self._release_escrow(record, self._account_of(record["from"], "subscriber", now_ms), now_ms)
        return dict(record, buckets=list(record["buckets"]))

    def _interop_credit(self, args: Args, now_ms: int) -> Result:
        """The receiving side: credit our subscriber with what another operator sent."""
        operator = _check_id("operator", args.get("operator"))
        receiver = self._subject({"subscriber_id": args.get("subscriber_id", "")}, now_ms)
        if receiver.kind != "subscriber" or receiver.status is Status.BARRED:
            raise InvalidRequest("the receiver cannot receive", field="to")
        unit = _unit(args.get("unit"))
        amount = _check_amount("amount", args.get("amount"))
        tid = _check_id("transfer_id", args.get("transfer_id"))
        bucket = self._new_bucket(
            receiver,
            f"from-{operator}-{tid}",
            {"unit": UNIT_NAME[unit], "amount": amount},
            Origin.GIFT,
        )
        # New value here, mirrored by what the sending operator settles to our account there.
        receiver.counter(unit)["credited"] -= amount
        receiver.counter(unit)["transferred_in"] += amount
        sender = self._account_of(f"operator:{operator}", "operator", now_ms).counter(unit)
        sender["credited"] += amount
        sender["transferred_out"] += amount
        return {
            "transfer_id": tid,
            "operator": operator,
            "subscriber_id": receiver.id,
            "unit": UNIT_NAME[unit],
            "amount": amount,
            "bucket": bucket.id,
        }

    def _create_offer(self, args: Args, now_ms: int) -> Result:
        """A network offers spare quota for sale: its account is credited with what it offers."""
        oid = _check_id("offer_id", args.get("offer_id"))
        if oid in self.offers:
            raise Conflict(f"offer id {oid!r} is taken")
        network = _check_id("network", args.get("network"))
        unit = _unit(args.get("unit"))
        if unit is Unit.MONEY:
            raise InvalidRequest("offers sell octets, seconds or events", field="unit")
        block = _check_amount("block_units", args.get("block_units"))
        price = _check_amount("price_micros", args.get("price_micros"), zero_ok=True)
        blocks = _check_amount("blocks", args.get("blocks"))
        _check_amount("offered units", block * blocks)
        offer = Offer(oid, network, unit, block, price, blocks)
        seller = self.subscribers.get(offer.account)
        if seller is None:
            seller = Subscriber(offer.account, {}, Status.ACTIVE, now_ms, kind="network")
            self.subscribers[seller.id] = seller
        self._new_bucket(
            seller,
            f"offer-{oid}",
            {"unit": UNIT_NAME[unit], "amount": block * blocks},
            Origin.PURCHASE,
        )
        self.offers[oid] = offer
        return offer.to_json()

    def _buy_quota(self, args: Args, now_ms: int) -> Result:
        """Buy at least `units` from the cheapest offers of the buyer's own network, paying in
        whole blocks with the buyer's free money; all or nothing."""
        pid = _check_id("purchase_id", args.get("purchase_id"))
        buyer = self._subject(args, now_ms)
        if buyer.kind != "subscriber" or buyer.status is Status.BARRED:
            raise InvalidRequest("only an active subscriber can buy quota")
        unit = _unit(args.get("unit"))
        want = _check_amount("units", args.get("units"))
        offers = sorted(
            (
                o
                for o in self.offers.values()
                if o.unit is unit and o.blocks_left and o.serves(buyer)
            ),
            key=lambda o: (o.price_micros / o.block_units, o.id),
        )
        picks: list[tuple[Offer, int]] = []
        for offer in offers:
            if want <= 0:
                break
            blocks = min(offer.blocks_left, _ceil_div(want, offer.block_units))
            picks.append((offer, blocks))
            want -= blocks * offer.block_units
        if want > 0:
            raise NoCredit("the network's offers do not cover that much", missing_units=want)
        cost = sum(o.price_micros * n for o, n in picks)
        # Every check before anything moves: the money must be there, free and unscoped.
        if cost:
            plan_transfer(buyer, Unit.MONEY, cost, now_ms)
        bought = 0
        for n, (offer, blocks) in enumerate(picks):
            seller = self.subscribers[offer.account]
            units = blocks * offer.block_units
            plan = plan_transfer(seller, unit, units, now_ms, only=[f"offer-{offer.id}"])
            self._move(seller, buyer, unit, plan, [NEVER_MS] * len(plan), f"{pid}-{n}", now_ms)
            price = offer.price_micros * blocks
            if price:  # each seller is paid for its own blocks
                pay = plan_transfer(buyer, Unit.MONEY, price, now_ms)
                self._move(
                    buyer, seller, Unit.MONEY, pay, [NEVER_MS] * len(pay), f"{pid}-pay-{n}", now_ms
                )
            offer.blocks_left -= blocks
            bought += units
        return {
            "purchase_id": pid,
            "subscriber_id": buyer.id,
            "unit": UNIT_NAME[unit],
            "units": bought,
            "cost_micros": cost,
            "offers": [{"offer": o.id, "blocks": n} for o, n in picks],
        }

    def _create_voucher(self, args: Args, now_ms: int) -> Result:
        """Carve `amount` out of the parent's free credit into a voucher account, at once."""
        vid = _check_id("voucher_id", args.get("voucher_id"))
        if vid in self.vouchers:
            raise Conflict(f"voucher id {vid!r} is taken")
        token_hash = args.get("token_hash")
        if (
            type(token_hash) is not str
            or len(token_hash) != 64
            or token_hash in self._voucher_tokens
        ):
            raise InvalidRequest("token_hash must be a fresh SHA-256 in hex")
        parent = self._subject({"subscriber_id": args.get("parent", "")}, now_ms)
        if parent.kind != "subscriber" or parent.status is Status.BARRED:
            raise InvalidRequest("only an active subscriber can issue vouchers", field="parent")
        unit = _unit(args.get("unit"))
        amount = _check_amount("amount", args.get("amount"))
        expires = args.get("expires_at_ms")
        expires = NEVER_MS if expires is None else _check_amount("expires_at_ms", expires)
        if expires <= now_ms:
            raise InvalidRequest("a voucher must expire in the future", field="expires_at")
        plan = plan_transfer(parent, unit, amount, now_ms)
        voucher = Voucher(vid, parent.id, unit, amount, token_hash, now_ms, expires)
        account = Subscriber(voucher.account, {}, Status.ACTIVE, now_ms, kind="voucher")
        self.subscribers[account.id] = account
        self._move(parent, account, unit, plan, [b.expires_at_ms for b, _ in plan], vid, now_ms)
        self.vouchers[vid] = voucher
        self._voucher_tokens[token_hash] = vid
        if expires < NEVER_MS:
            heapq.heappush(self._voucher_heap, (expires, vid))
        return voucher.to_json()

    def _redeem_voucher(self, args: Args, now_ms: int) -> Result:
        """Whoever holds the token takes the voucher's credit; a token works once."""
        vid = self._voucher_tokens.get(str(args.get("token_hash")))
        voucher = None if vid is None else self.vouchers[vid]
        if voucher is None or voucher.state != "issued" or voucher.expires_at_ms <= now_ms:
            raise no_such_voucher()
        owner = self._subject({"subscriber_id": args.get("subscriber_id", "")}, now_ms)
        if owner.kind != "subscriber":
            raise InvalidRequest("only a subscriber can redeem a voucher", field="subscriber_id")
        gifts = self._empty_voucher(voucher, owner, now_ms)
        voucher.state, voucher.redeemed_by = "redeemed", owner.id
        return {**voucher.to_json(), "buckets": gifts}

    def _empty_voucher(self, voucher: Voucher, to: Subscriber, now_ms: int) -> list[str]:
        account = self.subscribers[voucher.account]
        left = sum(b.available for b in account.buckets.values() if b.usable(now_ms))
        if not left:
            return []
        plan = plan_transfer(account, voucher.unit, left, now_ms)
        expiries = [b.expires_at_ms for b, _ in plan]
        return self._move(account, to, voucher.unit, plan, expiries, f"v-{voucher.id}", now_ms)
