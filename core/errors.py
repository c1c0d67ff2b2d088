"""Domain errors. Each carries a stable machine ``code`` and a sentence saying what was wrong."""


class DomainError(Exception):
    code = "domain_error"

    def __init__(self, detail: str):
        super().__init__(detail)
        self.detail = detail


class InvalidIin(DomainError):
    code = "invalid_iin"


class InvalidPhone(DomainError):
    code = "invalid_phone"


class InvalidValue(DomainError):
    code = "invalid_value"


class IllegalTransition(DomainError):
    code = "illegal_transition"

    def __init__(self, visit_id: int | None, state: str, step: str, why: str = ""):
        reason = f": {why}" if why else ""
        super().__init__(f"visit {visit_id} is {state}; cannot {step}{reason}")
        self.visit_id, self.state, self.step = visit_id, state, step


class NotFound(DomainError):
    code = "not_found"


class ConsentMissing(DomainError):
    code = "consent_missing"


class TemplateDecryptError(DomainError):
    code = "template_decrypt_failed"


class Conflict(DomainError):
    code = "conflict"


class ConcurrentWrite(Conflict):
    """The database refused a write on a unique key or a foreign key: usually another request wrote the same record
    at the same moment. Raised by the unit of work in place of the driver's integrity error."""
    code = "concurrent_write"


class DatabaseUnavailable(Exception):
    """The database could not be reached or answer (down, refused, timed out, SQLite locked): not the request's
    fault, and not a bug in a query. Raised by the unit of work in place of the driver's error, which is its cause."""


class StaffPhone(Conflict):
    """A number shared by a patient and the staff of the patient's clinic: staff would receive the patient's codes
    and the "were you there?" questions, and could confirm visits that never happened."""
    code = "staff_phone"


class InvalidName(InvalidValue):
    """A name with a line break, TAB, bidirectional override or invisible character: it would forge lines in
    logs, CSVs and chat messages, or show staff a name other than the one stored."""
    code = "invalid_name"

    def __init__(self, detail: str, field: str):
        super().__init__(detail)
        self.field = field
