"""A FastAPI app on Inngest: its signup route dispatches the welcome job, and the same app
serves the jobs of `examples/quickstart.py` as Inngest functions at `/api/inngest`.

    INNGEST_DEV=1 JOBS_BACKEND=inngest uvicorn examples.inngest.app:app --port 8000

(from the repository root; see README.md beside this file for the Dev Server.)
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel, EmailStr

from examples.quickstart import AppContext, Mailer, jobs, send_welcome
from jobs_core import JobDispatcherPort, create_dispatcher
from jobs_core.backends.inngest import create_inngest_functions, serve

dispatcher: JobDispatcherPort = create_dispatcher()  # JOBS_BACKEND=inngest: events to Inngest


def create_context() -> AppContext:
    """The context every job run gets (called once per run)."""
    return AppContext(mailer=Mailer(), jobs=dispatcher)


class SignUp(BaseModel):
    email: EmailStr


app = FastAPI(title="jobs_core on Inngest")


@app.post("/signup")
async def sign_up(body: SignUp) -> dict[str, Any]:
    """The use case: create the account (elided here), then send the welcome email later."""
    receipt = await dispatcher.dispatch(send_welcome, {"email": body.email})
    return {"welcome_job": receipt.dispatch_id}


inngest_client = dispatcher.inngest.client  # type: ignore[attr-defined]
serve(
    app,
    inngest_client,
    create_inngest_functions(jobs, context=create_context, client=inngest_client),
)
