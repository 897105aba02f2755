"""paychaos engine: a payment engine whose core never performs provider I/O.

Layers (ports and adapters):

- ``engine.domain``: pure money, state machine, posting rules, validation, errors.
- ``engine.service``: one unit of work per step (``begin_*`` / ``complete_*``).
- ``engine.adapters``: the SQLAlchemy store and its Alembic migrations.
- ``engine.entrypoints``: the command line (and later the HTTP API and workers).
"""

import logging

# A library's loggers say nothing until the application configures them (``paychaos
# serve`` does, as JSON lines): a simulation pumping the workers in process must not
# print their warnings on the terminal through logging's last resort.
logging.getLogger("paychaos").addHandler(logging.NullHandler())
