"""paychaos mock PSP: a stateful, Stripe-compatible payment provider that injects faults.

The pure core lives here; drivers (HTTP server, simpy world, tests) wrap it::

    core = ProviderCore(ManualClock(), random.Random(seed), faults={...})
    result = core.handle(ApiRequest("POST", "/v1/payment_intents", params, headers))
    # result.response (None on a timeout), result.latency_s, result.faults
    for delivery in core.due_deliveries():
        core.ack(delivery, status_code)
"""

from mock_psp.clock import Clock, ManualClock, OffsetClock
from mock_psp.core import ApiRequest, ApiResponse, ApiResult, ProviderCore
from mock_psp.faults import FaultPlanConfig, parse_fault_config
from mock_psp.webhooks import Delivery, DeliveryKind, verify_signature
from mock_psp.world import ProviderConfig

__all__ = [
    "ApiRequest",
    "ApiResponse",
    "ApiResult",
    "Clock",
    "Delivery",
    "DeliveryKind",
    "FaultPlanConfig",
    "ManualClock",
    "OffsetClock",
    "ProviderConfig",
    "ProviderCore",
    "parse_fault_config",
    "verify_signature",
]
