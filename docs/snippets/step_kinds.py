"""Step kinds, and a mistake caught when the saga is declared.

Run it with ``python step_kinds.py``.
"""

from __future__ import annotations

from pydantic import BaseModel

from pysaga import Saga, SagaDefinitionError, StepKind


class Loan(BaseModel):
    applicant: str
    approved: bool = False
    paid_out: bool = False


# --8<-- [start:kinds]
grant_loan = Saga("grant-loan", Loan, version=1)


@grant_loan.step  # before the pivot: compensatable
async def check_credit(loan: Loan) -> None: ...


@grant_loan.step  # compensatable, and it says how to undo itself
async def reserve_funds(loan: Loan) -> None: ...


@reserve_funds.compensate
async def release_funds(loan: Loan) -> None: ...


@grant_loan.step(pivot=True)  # the point of no return
async def pay_out(loan: Loan) -> Loan:
    return loan.model_copy(update={"paid_out": True})


@grant_loan.step  # after the pivot: retriable
async def send_contract(loan: Loan) -> None: ...


kinds = {step.name: step.kind for step in grant_loan.steps}
assert kinds == {
    "check_credit": StepKind.COMPENSATABLE,
    "reserve_funds": StepKind.COMPENSATABLE,
    "pay_out": StepKind.PIVOT,
    "send_contract": StepKind.RETRIABLE,
}
# --8<-- [end:kinds]


# --8<-- [start:mistake]
def declare_a_mistake() -> str:
    """Try to give the retriable step a compensation; return pysaga's answer."""
    try:

        @send_contract.compensate
        async def shred_contract(loan: Loan) -> None: ...

    except SagaDefinitionError as exc:  # raised right here, at import time
        return str(exc)
    return "accepted"
    # --8<-- [end:mistake]


if __name__ == "__main__":
    print(kinds)
    print(declare_a_mistake())
