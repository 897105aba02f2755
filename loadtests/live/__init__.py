"""``paychaos live``: a scenario script in wall time against running servers.

- ``plan``: the scenario's timeline scaled to wall time; the fault plan as sent.
- ``http``: the engine's public API and the mock PSP's admin API, nothing else.
- ``clients``: customers and their checkout clients (the simulation's story).
- ``settle``: quiescence after the faults stop, then a snapshot of both sides.
- ``checks``: the invariants over that snapshot (the simulation's oracle types).
- ``runner``: one run, start to report; ``cli``: the command.
"""
