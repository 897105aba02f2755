"""Endpoint handlers: each parses its whole command first, then changes state.

A handler takes the ``World`` of the request, the decoded parameters and the path
arguments, and returns Stripe's JSON body or raises an ``ApiError``. Parsing into a
frozen command before touching anything is what guarantees that bad input changes
nothing. A decline is not bad input: it records a failed charge and then raises.
"""
