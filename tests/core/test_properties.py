"""Property tests: the validators and the visit state machine hold their promises for any input."""
from __future__ import annotations

import datetime as dt
import re

from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from core.codes import CodeHasher, CodePolicy, generate_code, looks_like_code
from core.errors import IllegalTransition, InvalidIin, InvalidPhone
from core.iin import check_digit, make_iin, mask_iin, parse_iin
from core.model import ANSWER_CORRECTION_WINDOW, Actor, VerificationMethod, Visit, VisitMode, VisitState
from core.phone import normalise_phone

UTC = dt.UTC


@st.composite
def valid_iins(draw):
    birth = draw(st.dates(min_value=dt.date(1900, 1, 1), max_value=dt.date(2099, 12, 31)))
    male = draw(st.booleans())
    century = {19: 3, 20: 5}[birth.year // 100] + (0 if male else 1)
    serial = draw(st.integers(0, 9999))
    first_eleven = f"{birth:%y%m%d}{century}{serial:04d}"
    digit = check_digit(first_eleven)
    assume(digit is not None)  # no valid IIN has these 11 digits
    return first_eleven + str(digit), birth, "male" if male else "female"


@given(valid_iins())
def test_every_valid_iin_parses_to_its_birth_date_and_sex(case):
    iin, birth, sex = case
    facts = parse_iin(iin)
    assert (facts.birth_date, facts.sex) == (birth, sex)
    assert mask_iin(iin).endswith(iin[-4:]) and iin[:8] not in mask_iin(iin)


@given(st.dates(min_value=dt.date(1900, 1, 1), max_value=dt.date(2099, 12, 31)), st.booleans(),
       st.integers(0, 9000))
def test_made_iins_are_valid_and_carry_their_birth_date_and_sex(birth, male, serial):
    facts = parse_iin(make_iin(birth, male, serial))
    assert (facts.birth_date, facts.sex) == (birth, "male" if male else "female")
    assert int(facts.iin[7:11]) >= serial


@given(valid_iins(), st.integers(0, 9))
def test_a_wrong_check_digit_is_refused(case, other):
    iin = case[0]
    if str(other) == iin[-1]:
        other = (other + 1) % 10
    try:
        parse_iin(iin[:-1] + str(other))
    except InvalidIin as error:
        assert "check digit" in str(error)
    else:
        raise AssertionError("an IIN with a changed check digit was accepted")


@given(st.text(max_size=30))
def test_any_text_as_iin_is_either_valid_or_a_clear_invalid_iin(raw):
    try:
        facts = parse_iin(raw)
    except InvalidIin as error:
        assert str(error)
    else:
        assert re.fullmatch(r"\d{12}", facts.iin)


@st.composite
def kz_numbers(draw):
    return draw(st.sampled_from("67")) + "".join(draw(st.lists(st.sampled_from("0123456789"),
                                                               min_size=9, max_size=9)))


@given(kz_numbers())
def test_every_way_people_type_a_number_normalises_to_the_same(ten):
    spaced = f"{ten[:3]} {ten[3:6]} {ten[6:8]} {ten[8:]}"
    variants = [f"8{ten}", f"+7{ten}", f"7{ten}", ten, f"8 ({ten[:3]}) {ten[3:6]}-{ten[6:8]}-{ten[8:]}",
                f"+7 {spaced}", f"+7-{ten[:3]}-{ten[3:]}"]
    assert {normalise_phone(v) for v in variants} == {f"+7{ten}"}


@given(st.text(max_size=25))
def test_any_text_as_phone_is_either_kazakh_or_a_clear_invalid_phone(raw):
    try:
        phone = normalise_phone(raw)
    except InvalidPhone as error:
        assert str(error)
    else:
        assert re.fullmatch(r"\+7[67]\d{9}", phone)


@given(st.integers(1, 10_000), st.integers(1, 50))
@settings(max_examples=50)
def test_codes_are_six_digits_and_bound_to_one_visit_and_issuance(visit_id, generation):
    code = generate_code()
    hasher = CodeHasher(b"k" * 32)
    stored = hasher.digest(visit_id, generation, code)
    assert looks_like_code(code)
    assert hasher.matches(visit_id, generation, code, stored)
    assert not hasher.matches(visit_id + 1, generation, code, stored)
    assert not hasher.matches(visit_id, generation + 1, code, stored)


@given(st.integers(0, 240), st.integers(-300, 300))
def test_a_code_is_valid_at_least_its_validity_and_until_the_window_ends(validity, window_offset):
    policy = CodePolicy(validity=dt.timedelta(minutes=max(validity, 1)))
    issued = dt.datetime(2026, 11, 25, 9, tzinfo=UTC)
    window_end = issued + dt.timedelta(minutes=window_offset)
    expiry = policy.expiry(issued, window_end)
    assert expiry >= issued + policy.validity and expiry >= window_end


# Which states each step may start from; the machine below checks the model against this table.
# Written out here, not read from the model, so the oracle stays independent: both face kinds, single frame and live.
FACE_METHODS = {VerificationMethod.FACE, VerificationMethod.FACE_LIVE}
ALLOWED_FROM = {
    "verify": {VisitState.SCHEDULED},
    "close_unverified": {VisitState.SCHEDULED},
    "cancel": {VisitState.SCHEDULED},
    "patient_confirm": {VisitState.VERIFIED},
    "patient_dispute": {VisitState.SCHEDULED, VisitState.VERIFIED, VisitState.UNVERIFIED,
                        VisitState.PATIENT_CONFIRMED},
}


class VisitLifecycle(RuleBasedStateMachine):
    """Random sequences of steps: the visit never reaches a state the table forbids."""

    def __init__(self):
        super().__init__()
        self.now = dt.datetime(2026, 11, 25, 9, tzinfo=UTC)
        self.visit = None

    @precondition(lambda self: self.visit is None)
    @rule(mode=st.sampled_from(list(VisitMode)))
    def register(self, mode):
        self.visit = Visit(id=1, clinic_id=1, doctor_id=1, patient_id=1, start=self.now,
                           duration=dt.timedelta(minutes=20), mode=mode, service_code="A01")

    @precondition(lambda self: self.visit is not None)
    @rule(minutes=st.integers(0, 72 * 60))
    def time_passes(self, minutes):
        self.now += dt.timedelta(minutes=minutes)

    def _attempt(self, step, action):
        before = self.visit.state
        events_before = len(self.visit.pending_events)
        try:
            action()
        except IllegalTransition as error:
            assert self.visit.state is before, "a refused step changed the state"
            assert len(self.visit.pending_events) == events_before
            assert str(before.value) in str(error)
            return False
        return True

    @precondition(lambda self: self.visit is not None)
    @rule(method=st.sampled_from(list(VerificationMethod)))
    def verify(self, method):
        state = self.visit.state
        ok = self._attempt("verify", lambda: self.visit.verify(method, Actor.CLINIC_SYSTEM, self.now))
        face_online = method in FACE_METHODS and self.visit.mode is VisitMode.ONLINE
        assert ok == (state in ALLOWED_FROM["verify"] and not face_online)

    @precondition(lambda self: self.visit is not None)
    @rule()
    def close_window(self):
        state = self.visit.state
        assert self._attempt("close", lambda: self.visit.close_unverified(self.now)) == (
            state in ALLOWED_FROM["close_unverified"])

    @precondition(lambda self: self.visit is not None)
    @rule()
    def cancel(self):
        state = self.visit.state
        assert self._attempt("cancel", lambda: self.visit.cancel(Actor.CLINIC_SYSTEM, self.now)) == (
            state in ALLOWED_FROM["cancel"])

    @precondition(lambda self: self.visit is not None)
    @rule()
    def patient_says_yes(self):
        state = self.visit.state
        ok = self._attempt("confirm", lambda: self.visit.confirm_by_patient(self.now))
        assert ok == (state in ALLOWED_FROM["patient_confirm"] | {VisitState.PATIENT_CONFIRMED})

    @precondition(lambda self: self.visit is not None)
    @rule(reason=st.text(max_size=50))
    def patient_says_no(self, reason):
        state, answered = self.visit.state, self.visit.answered_at
        ok = self._attempt("dispute", lambda: self.visit.dispute_by_patient(self.now, reason))
        late = state is VisitState.PATIENT_CONFIRMED and self.now - answered > ANSWER_CORRECTION_WINDOW
        assert ok == ((state in ALLOWED_FROM["patient_dispute"] and not late)
                      or state is VisitState.PATIENT_DISPUTED)

    @invariant()
    def events_form_a_chain_of_allowed_steps(self):
        if self.visit is None:
            return
        state = VisitState.SCHEDULED
        for event in self.visit.pending_events:
            assert event.from_state is state
            if event.step in ALLOWED_FROM:
                assert event.from_state in ALLOWED_FROM[event.step]
            state = event.to_state
        assert state is self.visit.state
        if self.visit.mode is VisitMode.ONLINE:
            assert self.visit.verified_by not in FACE_METHODS


VisitLifecycle.TestCase.settings = settings(max_examples=150, stateful_step_count=25, deadline=None)
test_visit_lifecycle = VisitLifecycle.TestCase
