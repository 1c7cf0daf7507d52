"""The three state machines of SPEC §2, as data, each run by one shared ``transitions.Machine``.

Each table reads like SPEC §2: ``(trigger, sources, destination)``. A record is never
given a Machine of its own (that costs about twice as much per event, see
pytransitions/transitions#434): ``fire`` adds a throw-away model to the shared machine,
pulls the trigger and removes the model again.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from enum import StrEnum
from typing import Any

from transitions import Machine, MachineError

from statemachine.table import (
    AutomatedCallingStatus,
    GateKeeperReason,
    GateKeeperStatus,
    StatusReason,
)


class Trigger(StrEnum):
    """Every trigger a history entry can name."""

    CREATE = "create"
    PROVISION = "provision"
    PROVISIONED = "provisioned"
    FAIL = "fail"
    RETRY = "retry"
    DEPROVISION = "deprovision"
    DEPROVISIONED = "deprovisioned"
    RECOVER = "recover"
    # GateKeeper pair
    ACTIVATE = "activate"
    REPORT_ERROR = "report_error"
    CLOSE_GATE = "close_gate"
    # automated calling
    REQUEST_TEST = "request_test"
    TEST_STARTED = "test_started"
    TEST_PASSED = "test_passed"
    TEST_FAILED = "test_failed"
    # parent deleted
    REMOVE_LINK = "remove_link"
    DELETE = "delete"


class GateKeeper(StrEnum):
    """The four GateKeeper states of SPEC §2.2, each one stored pair."""

    UNSET = "Unset"
    ACTIVE_RUNNING = "Active/Running"
    INACTIVE_ERROR = "Inactive/Error"
    INACTIVE_DEPROVISIONED = "Inactive/Deprovisioned"

    @property
    def pair(self) -> tuple[GateKeeperStatus | None, GateKeeperReason | None]:
        return _GATE_PAIRS[self]

    @classmethod
    def from_pair(
        cls, status: GateKeeperStatus | None, reason: GateKeeperReason | None
    ) -> GateKeeper | None:
        """The state for a stored pair, or None when the pair is not one of the four."""
        return _PAIR_GATES.get((status, reason))


_GATE_PAIRS = {
    GateKeeper.UNSET: (None, None),
    GateKeeper.ACTIVE_RUNNING: (GateKeeperStatus.ACTIVE, GateKeeperReason.RUNNING),
    GateKeeper.INACTIVE_ERROR: (GateKeeperStatus.INACTIVE, GateKeeperReason.ERROR),
    GateKeeper.INACTIVE_DEPROVISIONED: (
        GateKeeperStatus.INACTIVE, GateKeeperReason.DEPROVISIONED,
    ),
}
_PAIR_GATES = {pair: gate for gate, pair in _GATE_PAIRS.items()}

Row = tuple[Trigger, Sequence[Any], Any]

S = StatusReason
LIFECYCLE: tuple[Row, ...] = (
    (Trigger.PROVISION, (S.DRAFT, S.ERROR, S.RUNNING), S.PROCESSING),
    (Trigger.PROVISIONED, (S.PROCESSING,), S.RUNNING),
    (Trigger.FAIL, (S.PROCESSING,), S.ERROR),
    (Trigger.RETRY, (S.ERROR,), S.PROCESSING),
    (Trigger.RETRY, (S.DEPROVISIONING,), S.DEPROVISIONING),
    (Trigger.DEPROVISION, (S.DRAFT, S.PROCESSING, S.RUNNING, S.ERROR), S.DEPROVISIONING),
    (Trigger.DEPROVISIONED, (S.DEPROVISIONING,), S.DEPROVISIONED),
    (Trigger.FAIL, (S.DEPROVISIONING,), S.DEPROVISIONING),
    # §2.2: a GateKeeper report of (Inactive, Error) on a Running record, and the
    # report of (Active, Running) that recovers an Error the GateKeeper caused.
    (Trigger.REPORT_ERROR, (S.RUNNING,), S.ERROR),
    (Trigger.RECOVER, (S.ERROR,), S.RUNNING),
)

G = GateKeeper
GATEKEEPER: tuple[Row, ...] = (
    (Trigger.ACTIVATE, (G.UNSET, G.INACTIVE_ERROR, G.ACTIVE_RUNNING), G.ACTIVE_RUNNING),
    (Trigger.REPORT_ERROR, (G.UNSET, G.ACTIVE_RUNNING), G.INACTIVE_ERROR),
    (Trigger.RECOVER, (G.INACTIVE_ERROR,), G.ACTIVE_RUNNING),
    (Trigger.CLOSE_GATE, (G.UNSET, G.ACTIVE_RUNNING, G.INACTIVE_ERROR), G.INACTIVE_DEPROVISIONED),
)

C = AutomatedCallingStatus
CALLING: tuple[Row, ...] = (
    (Trigger.REQUEST_TEST, (C.NOT_TESTED, C.SUCCESS, C.FAILURE), C.IN_PROGRESS),
    (Trigger.TEST_STARTED, (C.IN_PROGRESS,), C.IN_PROGRESS),
    (Trigger.TEST_PASSED, (C.IN_PROGRESS,), C.SUCCESS),
    (Trigger.TEST_FAILED, (C.IN_PROGRESS,), C.FAILURE),
)


def _state_name(state: Any) -> str:
    return str(state.name)


class StateMachine:
    """One machine type over one enum of states, shared by every record."""

    def __init__(self, name: str, states: type[Any], table: tuple[Row, ...]) -> None:
        self.name = name
        self.states = states
        self.table = table
        self._by_name = {member.name: member for member in states}
        self._machine = Machine(
            model=None,
            states=list(self._by_name),
            transitions=[
                {"trigger": trigger.value, "source": [_state_name(s) for s in sources],
                 "dest": _state_name(dest)}
                for trigger, sources, dest in table
            ],
            initial=next(iter(self._by_name)),
            auto_transitions=False,
        )
        self._local = threading.local()

    def fire(self, state: Any, trigger: Trigger) -> Any | None:
        """The state ``trigger`` leads to from ``state``, or None when it may not fire there."""
        model = self._model()
        self._machine.set_state(state.name, model=model)
        try:
            model.trigger(trigger.value)  # added by add_model
        except (MachineError, AttributeError):  # not allowed here / not a trigger of this machine
            return None
        return self._by_name[model.state]

    def _model(self) -> _Subject:
        """This thread's model on the machine, added once (adding and removing a model for
        every lookup cost more than half of each lookup): put in ``state``, fire, read."""
        model: _Subject | None = getattr(self._local, "model", None)
        if model is None:
            model = _Subject()
            self._machine.add_model(model, initial=self._machine.initial)
            self._local.model = model
        return model

    def triggers(self, state: Any) -> list[str]:
        """The triggers that may fire from ``state`` (for tests and the diagram)."""
        return sorted(self._machine.get_triggers(state.name))


class _Subject:
    """A throw-away model; transitions stores the state in ``state`` and adds ``trigger``."""

    state: str
    trigger: Callable[[str], bool]  # annotation only: add_model sets the attribute


LIFECYCLE_MACHINE = StateMachine("Lifecycle (statuscode)", StatusReason, LIFECYCLE)
GATEKEEPER_MACHINE = StateMachine("GateKeeper", GateKeeper, GATEKEEPER)
CALLING_MACHINE = StateMachine("Automated calling", AutomatedCallingStatus, CALLING)
MACHINES = (LIFECYCLE_MACHINE, GATEKEEPER_MACHINE, CALLING_MACHINE)
