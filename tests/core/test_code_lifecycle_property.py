"""The one-time code lifecycle as a property: random sequences of issuing, guessing, re-issuing and time
passing, run against the real services on a real SQLite file, must always agree with a small model of the
rules (window, expiry, superseded codes, 5 attempts then locked, single use)."""
from __future__ import annotations

import asyncio
import datetime as dt

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from core.clock import ManualClock
from core.codes import CodeOutcome
from core.db.engine import create_engine
from core.db.uow import UnitOfWorkFactory
from core.model import VisitState
from core.services import Context, registry, visits
from core.services.codes import issue_code, verify_code
from tests.conftest import VALID_IINS, migrate_from_template
from tests.conftest import test_settings as make_settings

T0 = dt.datetime(2026, 11, 25, 3, 0, tzinfo=dt.UTC)
START = T0 + dt.timedelta(minutes=16)  # codes may be sent from 15 minutes before the start
DURATION = dt.timedelta(minutes=20)


class CodeLifecycle(RuleBasedStateMachine):
    def __init__(self, db_dir):
        super().__init__()
        self.loop = asyncio.new_event_loop()
        url = f"sqlite+aiosqlite:///{db_dir}/codes-{id(self)}.db"
        self.settings = make_settings(url, doctor_code_failures_per_hour=1000)
        self.engine = create_engine(url)
        self.clock = ManualClock(T0)
        self.ctx = Context.build(self.settings, UnitOfWorkFactory(self.engine), self.clock)
        self.visit_id = self.run(self._setup())
        policy = self.settings.code_policy
        self.window_end = START + DURATION + self.settings.visit_grace
        self.lead, self.validity, self.max_attempts = policy.issue_lead, policy.validity, policy.max_attempts
        self.codes: list[str] = []  # every code issued, the last one current
        self.expires: dt.datetime | None = None
        self.attempts = 0
        self.verified = False

    def run(self, coro):
        return self.loop.run_until_complete(coro)

    async def _setup(self) -> int:
        await migrate_from_template(self.settings.database_url)
        clinic = await registry.create_clinic(self.ctx, "Clinic")
        doctor = await registry.add_doctor(self.ctx, clinic.id, "Doctor", "+77011112233")
        patient = (await registry.upsert_patient(self.ctx, clinic.id, VALID_IINS[0], "Patient",
                                                 "+77015556677")).patient
        visit = await visits.register_visit(self.ctx, clinic_id=clinic.id, doctor_id=doctor.id,
                                            patient_id=patient.id, start=START, duration=DURATION,
                                            mode="in_person", service_code="A01")
        self.clinic_id = clinic.id
        return visit.id

    def teardown(self):
        self.run(self.engine.dispose())
        self.loop.close()

    # --- the model's expectation of one check -----------------------------------------------------------

    def expected(self, code: str) -> CodeOutcome:
        if self.verified:
            return CodeOutcome.ALREADY_USED
        self.attempts += 1
        if self.attempts > self.max_attempts:
            return CodeOutcome.LOCKED
        if not self.codes:
            return CodeOutcome.NO_CODE
        if self.clock.now() > self.expires:
            return CodeOutcome.EXPIRED
        if code != self.codes[-1]:
            return CodeOutcome.WRONG
        self.verified = True
        return CodeOutcome.VERIFIED

    def check(self, code: str) -> None:
        want = self.expected(code)
        got = self.run(verify_code(self.ctx, self.clinic_id, self.visit_id, code))
        assert got.outcome is want, (code, self.codes, self.attempts)
        if want not in (CodeOutcome.ALREADY_USED,):
            assert got.attempts_left == max(self.max_attempts - self.attempts, 0)

    # --- rules --------------------------------------------------------------------------------------------

    @rule(minutes=st.integers(0, 12))
    def time_passes(self, minutes):
        self.clock.advance(dt.timedelta(minutes=minutes))

    @rule()
    def send_a_code(self):
        now = self.clock.now()
        allowed = not self.verified and START - self.lead <= now <= self.window_end
        issued = self.run(issue_code(self.ctx, self.visit_id))
        assert (issued is not None) == allowed
        if issued:
            self.codes.append(issued.code)
            self.expires = max(now + self.validity, self.window_end)
            assert issued.expires_at == self.expires

    @precondition(lambda self: self.codes)
    @rule()
    def patient_reads_out_the_current_code(self):
        self.check(self.codes[-1])

    @precondition(lambda self: len(self.codes) >= 2)
    @rule(pick=st.integers(0, 10))
    def patient_reads_out_a_superseded_code(self, pick):
        old = self.codes[pick % (len(self.codes) - 1)]
        if old != self.codes[-1]:
            self.check(old)

    @rule(code=st.from_regex(r"\A[0-9]{6}\Z", fullmatch=True))
    def someone_guesses(self, code):
        if self.codes and code == self.codes[-1]:
            return  # a lucky guess is the current code: covered by the rule above
        self.check(code)

    @invariant()
    def database_agrees_with_the_model(self):
        async def read():
            async with self.ctx.uow(read_only=True) as uow:
                visit = await uow.visits.get(self.visit_id)
                return visit.state, await uow.visits.code_attempts(self.visit_id)
        state, attempts = self.run(read())
        assert state is (VisitState.VERIFIED if self.verified else VisitState.SCHEDULED)
        assert attempts == self.attempts


def test_code_lifecycle(tmp_path):
    class Machine(CodeLifecycle):
        def __init__(self):
            super().__init__(tmp_path)

    Machine.TestCase.settings = settings(max_examples=40, stateful_step_count=25, deadline=None,
                                          derandomize=True)
    Machine.TestCase().runTest()
