"""Rating: tariff plans, billing patterns, and which price applies to a use of a service."""

from quotaflow.rating.rater import Rated, Rater
from quotaflow.rating.tariff import (
    DEFAULT_TARIFF,
    Band,
    Plan,
    ServiceTariff,
    TariffBook,
    TariffError,
    load_document,
    load_text,
)

__all__ = [
    "DEFAULT_TARIFF",
    "Band",
    "Plan",
    "Rated",
    "Rater",
    "ServiceTariff",
    "TariffBook",
    "TariffError",
    "load_document",
    "load_text",
]
