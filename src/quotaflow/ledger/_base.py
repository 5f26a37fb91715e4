"""What every part of the ledger shares: argument checks, stated limits, small helpers."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any, Final, TypeVar

from mypy_extensions import trait

from quotaflow.ledger.errors import (
    InvalidAmount,
    InvalidRequest,
)
from quotaflow.ledger.model import (
    Bucket,
    Group,
    Origin,
    Price,
    PriceDoc,
    Status,
    Subscriber,
    Unit,
)
from quotaflow.ledger.transfers import Offer, Transfer, TransferLimits, Voucher

Result = dict[str, Any]
Args = dict[str, Any]

# Any single amount, and the most one bucket may hold (top-ups and refunds that would pass it are
# refused before anything moves): amounts stay inside 64 bits, which the journal and snapshots
# need. Lifetime counters are sums of such amounts and are not capped.
AMOUNT_MAX: Final = 2**62
# The same bounds as literals that compiled comparisons use unboxed: 2**62 itself lies just past
# mypyc's unboxed integers, which made every amount check a boxed comparison (about 550
# instructions; now a few dozen).
_AMOUNT_MAX_LESS_ONE: Final = 4_611_686_018_427_387_903
_AMOUNT_MIN: Final = -4_611_686_018_427_387_904
ID_LEN_MAX: Final = 128
OP_ID_LEN_MAX: Final = 256  # room for an interface's prefix around a caller's id
SESSION_SCAN_MS: Final = 3_600_000  # how often the sweeper looks for idle sessions


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def _split(buckets: Iterable[Bucket], want: int) -> list[tuple[Bucket, int]]:
    """How `want` is taken from what each bucket has free, in order (nothing moves here)."""
    takes: list[tuple[Bucket, int]] = []
    for b in buckets:
        if want <= 0:
            break
        take = min(b.available, want)
        if take:
            takes.append((b, take))
            want -= take
    return takes


PROVIDERS_MAX: Final = 8


def _month(now_ms: int) -> int:
    """Months since 1970 (UTC), the period of a provider's limit."""
    day = datetime.fromtimestamp(now_ms / 1000, UTC)
    return day.year * 12 + day.month - 1


def _stale(key: str, today: int, month: int) -> bool:
    period = int(key.rsplit("|", 1)[1])
    return period < month if key.startswith("prov|") else period < today


def _check_amount(name: str, value: Any, *, signed: bool = False, zero_ok: bool = False) -> int:
    if type(value) is not int:  # bool is a subclass of int: refuse it too
        raise InvalidAmount(f"{name} must be an integer", field=name)
    amount: int = value
    low = _AMOUNT_MIN if signed else (0 if zero_ok else 1)
    if not (low <= amount <= _AMOUNT_MAX_LESS_ONE or amount == AMOUNT_MAX):
        raise InvalidAmount(f"{name} out of range [{low}, {AMOUNT_MAX}]", field=name)
    return amount


def _check_room(bucket: Bucket, amount: int) -> None:
    """Refuse, before anything moves, to credit a bucket past AMOUNT_MAX (sums past 64 bits
    could not be journaled or kept)."""
    if bucket.amount > AMOUNT_MAX - amount:
        # The amount, not the system, is at fault: an invalid amount (422 over HTTP, 5004 over
        # Gy, 400 over Nchf), not a limit reached (429 / 5006 / 503, which invite a retry).
        raise InvalidAmount(
            f"bucket {bucket.id!r} would hold more than {AMOUNT_MAX}", limit=AMOUNT_MAX
        )


def _check_id(name: str, value: Any) -> str:
    if type(value) is not str or not 0 < len(value) <= ID_LEN_MAX:
        raise InvalidRequest(f"{name} must be a string of 1..{ID_LEN_MAX} characters", field=name)
    return value


def _optional_id(name: str, value: Any) -> str | None:
    return None if value is None else _check_id(name, value)


RATING_GROUP_MAX: Final = 2**32 - 1  # Rating-Group: Unsigned32 in Diameter, uint32 in Nchf


def _rating_group(value: Any) -> int | None:
    """None (any service) or a rating group; checked before a typed (compiled) call sees it."""
    if value is None:
        return None
    if type(value) is int:
        group: int = value
        if 0 <= group <= RATING_GROUP_MAX:
            return group
    raise InvalidRequest(
        f"rating_group must be an integer in [0, {RATING_GROUP_MAX}]", field="rating_group"
    )


E = TypeVar("E", Unit, Status, Origin)


def _choice(table: dict[str, E], value: Any, name: str) -> E:
    """The enum member a client's string names (a lookup table: Enum(value) costs more)."""
    found = table.get(value) if isinstance(value, str) else None
    if found is None:
        raise InvalidRequest(f"{name} must be one of {list(table)}", field=name)
    return found


_UNITS: Final[dict[str, Unit]] = {u.value: u for u in Unit}
_STATUSES: Final[dict[str, Status]] = {s.value: s for s in Status}
_ORIGINS: Final[dict[str, Origin]] = {o.value: o for o in Origin}


def _unit(value: Any) -> Unit:
    return _choice(_UNITS, value, "unit")


def _status(value: Any) -> Status:
    return _choice(_STATUSES, value, "status")


def _origin(value: Any) -> Origin:
    return _choice(_ORIGINS, value, "origin")


def _price(value: Any) -> Price | None:
    if value is None:
        return None
    if type(value) is PriceDoc:  # made by price_doc, which checked it as below
        price: Price = value.price
        return price
    if not isinstance(value, dict):
        raise InvalidRequest("price must be an object", field="price")
    micros = _check_amount("price.price_micros", value.get("price_micros"), zero_ok=True)
    per = _check_amount("price.per_units", value.get("per_units"))
    # Without a billing pattern, every started block of `per_units` is charged whole.
    first = _check_amount("price.first_units", value.get("first_units", per))
    step = _check_amount("price.next_units", value.get("next_units", per))
    connect = _check_amount("price.connect_micros", value.get("connect_micros", 0), zero_ok=True)
    return Price(micros, per, first, step, connect)


def price_doc(price: Price) -> PriceDoc:
    """The price as an operation's arguments carry it, checked once as `_price` checks a
    plain dict (a tariff's numbers past AMOUNT_MAX are refused here, as they always were
    at the charge: a journaled charge must replay). Raises InvalidAmount or InvalidRequest."""
    doc = PriceDoc(price)
    _price(dict(doc))
    return doc


class Limits:
    """Every table has a stated maximum; reaching one is an answer with a reason."""

    def __init__(
        self,
        subscribers_max: int = 10_000_000,
        buckets_per_subscriber_max: int = 1_000,
        reservations_per_subscriber_max: int = 4_096,
        sessions_max: int = 4_000_000,
        idempotency_entries_max: int = 2_000_000,
        idempotency_window_ms: int = 3_600_000,
        transfers_max: int = 10_000_000,
        transfers: TransferLimits | None = None,
        session_idle_ms: int = 86_400_000,
    ) -> None:
        self.subscribers_max = subscribers_max
        self.buckets_per_subscriber_max = buckets_per_subscriber_max
        self.reservations_per_subscriber_max = reservations_per_subscriber_max
        self.sessions_max = sessions_max
        self.idempotency_entries_max = idempotency_entries_max
        self.idempotency_window_ms = idempotency_window_ms
        self.transfers_max = transfers_max
        self.transfers = transfers or TransferLimits()
        # A session with no report and nothing reserved for this long is closed by the sweeper.
        self.session_idle_ms = session_idle_ms


@trait
class LedgerState:
    """What the ledger's operation mixins (groups, moving quota) use of the Ledger they are
    part of. A trait, so that mypyc compiles the mixins into the Ledger; the Ledger's own
    definitions of these methods are the ones that run."""

    subscribers: dict[str, Subscriber]
    groups: dict[str, Group]
    limits: Limits
    transfers: dict[str, Transfer]
    _sent: dict[str, int]
    vouchers: dict[str, Voucher]
    _voucher_tokens: dict[str, str]
    offers: dict[str, Offer]
    remote: dict[str, dict[str, Any]]
    _reset_heap: list[tuple[int, str]]
    _voucher_heap: list[tuple[int, str]]

    def subscriber(self, subscriber_id: object) -> Subscriber:
        raise NotImplementedError

    def _subject(self, args: Args, now_ms: int) -> Subscriber:
        raise NotImplementedError

    def _new_bucket(self, sub: Subscriber, bucket_id: str, args: Args, origin: Origin) -> Bucket:
        raise NotImplementedError

    def _topup(self, args: Args, now_ms: int) -> Result:
        raise NotImplementedError

    def _candidates(
        self, sub: Subscriber, unit: Unit, rating_group: int | None, now_ms: int
    ) -> list[Bucket]:
        raise NotImplementedError
