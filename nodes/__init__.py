"""The national node: local store, hub client, agent, and the composing of messages.

``exchange node run`` runs :class:`nodes.agent.NodeAgent`; the user commands
(``exchange send``, ``inbox``, ``read``, ...) work on the node's store
(:mod:`nodes.store`). :mod:`nodes.testing` runs a whole exchange in one process.
"""
