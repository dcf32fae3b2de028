"""The Celery baseline: the webhook sender a Python team without relay would write.

A Celery task signs each webhook with Standard Webhooks and POSTs it with httpx, Redis as the
broker. `python -m bench.baseline` measures it against relay on the same receiver and cores.
This package's own modules import nothing of relay; `tasks` and `enqueue` run in the baseline's
virtualenv (see requirements.txt), the driver (`__main__`) in relay's.
"""

# What the baseline's worker reads from its environment, as a team's app would: the broker, and
# the webhook secret (from the environment, so it never travels through Redis in the clear).
BROKER_URL_ENV = "WEBHOOKS_BROKER_URL"
SECRET_ENV = "WEBHOOKS_SECRET"
