"""adstream's runtime: transports, the actor loop, offsets, flow control, config, the command
dispatcher.

Nothing here knows about ads; the roles live in ``workers``, the commands and development
tools in ``tools`` (see the README's layout section).
"""
