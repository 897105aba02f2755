"""Service steps: one unit of work each, the engine's public surface."""

from engine.service.engine import PaymentEngine
from engine.service.views import EventResult, PaymentView, StepResult

__all__ = ["EventResult", "PaymentEngine", "PaymentView", "StepResult"]
