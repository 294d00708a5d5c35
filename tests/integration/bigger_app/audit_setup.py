"""What a team's ``--setup`` hook looks like: it returns the headers the load needs (a token here,
read from the environment ``--env-file`` gives)."""

import os


def token() -> dict[str, str]:
    return {"X-Token": os.environ["BIGGER_APP_TOKEN"]}
