"""adstream's runtime: transports, the actor loop, offsets, flow control, config, CLI.

Nothing here knows about ads; the roles live in ``workers``.
"""
