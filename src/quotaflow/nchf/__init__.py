"""5G Nchf_ConvergedCharging v3 (3GPP TS 32.291 Rel-17) over HTTP/2: the CHF's SBI interface.

Wire mapping only: ChargingDataRequest JSON to engine session calls and their answers back to
ChargingDataResponse JSON or ProblemDetails; ChargingNotify from engine events.
"""

from quotaflow.nchf._app import NchfApp, create_app, problem_exception_handlers
from quotaflow.nchf._config import BASE_PATH, NchfConfig

__all__ = ["BASE_PATH", "NchfApp", "NchfConfig", "create_app", "problem_exception_handlers"]
