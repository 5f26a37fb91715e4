"""The compiled hot path: it is what runs, it agrees with its source, stale builds are unused."""

from __future__ import annotations

import importlib.machinery
import json
import os
import subprocess
import sys
from pathlib import Path

import quotaflow
from quotaflow import _native

# A deterministic run of the ledger: subscribers, buckets of several scopes and expiries, a
# sponsor, reservations committed in part, released, lapsed, refused. Prints the final state.
SCRIPT = """
import json, sys
import quotaflow
from quotaflow.ledger import ChargingError
from quotaflow.ledger.ledger import Ledger
L = Ledger()
out = []
def op(name, op_id, args, now):
    try:
        out.append(L.apply(name, op_id, args, now)[0])
    except ChargingError as exc:
        out.append({"error": type(exc).__name__, "message": str(exc)})
for i in range(6):
    op("create_subscriber", f"c{i}", {"id": f"s{i}", "msisdn": f"4670000{i}"}, 1)
    op("add_bucket", f"b{i}", {"subscriber_id": f"s{i}", "bucket_id": f"k{i}", "unit": "octets",
       "amount": 5000 + i, "rating_groups": [10], "expires_at_ms": 90_000}, 1)
    op("topup", f"t{i}", {"subscriber_id": f"s{i}", "unit": "octets", "amount": 20_000}, 1)
    op("topup", f"m{i}", {"subscriber_id": f"s{i}", "unit": "money", "amount": 1_000_000}, 1)
for n in range(400):
    sid = f"s{n % 6}"
    now = 1000 + n * 250
    price = {"price_micros": 7, "per_units": 100} if n % 3 == 0 else None
    args = {"subscriber_id": sid, "reservation_id": f"r{n}", "unit": "octets",
            "rating_group": 10 if n % 2 else 20, "units_max": 900 + n, "validity_ms": 30_000}
    if price:
        args["price"] = price
    op("reserve", f"a{n}", args, now)
    if n % 4 == 0:
        op("commit", f"x{n}", {"subscriber_id": sid, "reservation_id": f"r{n}",
           "used_units": 500 + n}, now + 10)
    elif n % 4 == 1:
        op("release", f"x{n}", {"subscriber_id": sid, "reservation_id": f"r{n}"}, now + 10)
    op("reserve", f"a{n}", args, now)  # a repeat: the first answer, nothing changes
L.check_invariants()
print(json.dumps({"mode": quotaflow.NATIVE_MODE, "answers": out, "state": L.snapshot()},
                 sort_keys=True, default=str))
"""


def _run(native: bool) -> dict[str, object]:
    env = dict(os.environ, QUOTAFLOW_NATIVE="1" if native else "0")
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, check=True
    )
    return json.loads(done.stdout)  # type: ignore[no-any-return]


def test_the_compiled_modules_are_what_runs() -> None:
    """The suite tests the build that ships: scripts/test.sh compiles before it runs."""
    if os.environ.get("QUOTAFLOW_NATIVE") == "0":
        assert quotaflow.NATIVE_MODE.startswith("interpreted")
        return
    assert quotaflow.NATIVE_MODE == "compiled", (
        f"{quotaflow.NATIVE_MODE}: run `sh scripts/test.sh` (it rebuilds) or set QUOTAFLOW_NATIVE=0"
    )
    import quotaflow.ledger.ledger as ledger
    import quotaflow.store.embedded as embedded

    for module in (ledger, embedded):
        assert not module.__file__ or not module.__file__.endswith(".py"), module.__file__


def test_compiled_and_interpreted_ledgers_agree() -> None:
    interpreted = _run(native=False)
    assert str(interpreted["mode"]).startswith("interpreted")
    compiled = _run(native=True)
    if quotaflow.NATIVE_MODE == "compiled":
        assert compiled["mode"] == "compiled"
    assert compiled["answers"] == interpreted["answers"]
    assert compiled["state"] == interpreted["state"]
    answers = interpreted["answers"]
    assert isinstance(answers, list)
    kinds = {a.get("error", "ok") for a in answers}
    assert {"ok", "NoCredit"} <= kinds  # the run reaches refusals, not only grants


def test_a_stale_build_is_not_used(tmp_path: Path) -> None:
    manifest = tmp_path / "_native.json"
    assert _native.why_not_compiled(manifest) in ("not built", "QUOTAFLOW_NATIVE=0")
    digests = {m: _native.source_digest(m) for m in (*_native.COMPILED, *_native.C_MODULES)}
    digests[_native.COMPILED[0]] = "0" * 64  # built from a source that has changed since
    manifest.write_text(json.dumps({"modules": digests}))
    reason = _native.why_not_compiled(manifest)
    if os.environ.get("QUOTAFLOW_NATIVE") != "0" and quotaflow.NATIVE_MODE == "compiled":
        assert reason == f"{_native.COMPILED[0]} changed since it was compiled"
        manifest.write_text(
            json.dumps(
                {
                    "modules": {
                        **digests,
                        _native.COMPILED[0]: _native.source_digest(_native.COMPILED[0]),
                    }
                }
            )
        )
        assert _native.why_not_compiled(manifest) is None
    else:
        assert reason is not None


def test_a_compiled_module_no_longer_listed_is_found(tmp_path: Path) -> None:
    """An older build's extension module would shadow its source: it is seen, by name."""
    suffix = importlib.machinery.EXTENSION_SUFFIXES[0]
    (tmp_path / "rating").mkdir()
    (tmp_path / "rating" / f"tariff{suffix}").write_bytes(b"")
    (tmp_path / "rating" / "tariff.py").write_text("")
    assert _native.compiled_files(tmp_path) == {
        "quotaflow.rating.tariff": tmp_path / "rating" / f"tariff{suffix}"
    }
    if quotaflow.NATIVE_MODE == "compiled":
        assert set(_native.compiled_files()) == {*_native.COMPILED, *_native.C_MODULES}


# Built once, at configuration or provisioning time (or per admin call), not per request:
# these may keep the constructor dataclasses generate.
BUILT_RARELY = {
    "quotaflow.ledger.model": {"Bucket", "Subscriber", "Member", "Group"},
    "quotaflow.ledger.transfers": {"TransferLimits", "Transfer", "Voucher", "Offer"},
    "quotaflow.engine.grants": {"UnitGrantLimits", "GrantPolicy"},
    "quotaflow.rating.tariff": {"Band", "ServiceTariff", "Plan", "TariffBook"},
    "quotaflow.diameter.dictionary": {
        "Rule",
        "Grammar",
        "AvpDef",
        "CommandDef",
        "AvpSpec",
        "CommandSpec",
        "Dictionary",
    },
    "quotaflow.diameter.message": {"RawAddress"},
    "quotaflow.diameter.events": {
        "PeerInfo",
        "CapabilitiesExchanged",
        "UnmatchedAnswer",
        "MessageRejected",
        "ConnectionClosed",
    },
    "quotaflow.diameter.peer": {"AllowedPeer", "PeerConfig"},
    "quotaflow.diameter.gy_mapping": {"Reading"},
    "quotaflow.records._chain": {"SealedFile"},
    "quotaflow.records._writer": {"Rotation", "_Open"},
}


def test_per_request_dataclasses_in_compiled_modules_have_their_own_constructor() -> None:
    """A dataclass-generated __init__ runs interpreted even in a compiled class (0.3-0.7 us a
    call against ~0.05 us): every dataclass in a compiled module declares init=False and writes
    its own, unless it is built rarely (listed above)."""
    import dataclasses
    import importlib
    import inspect

    generated = []
    for name in _native.COMPILED:
        module = importlib.import_module(name)
        for cls_name, cls in vars(module).items():
            if (
                inspect.isclass(cls)
                and cls.__module__ == name
                and dataclasses.is_dataclass(cls)
                and cls.__dataclass_params__.init  # type: ignore[attr-defined]
                and cls_name not in BUILT_RARELY.get(name, set())
            ):
                generated.append(f"{name}.{cls_name}")
    assert generated == []
