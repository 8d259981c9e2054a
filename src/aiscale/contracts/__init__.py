"""Values and protocols that several parts share: the ``Fleet`` the control loops see, the
injected ``Clock``, and the immutable latency ``Histogram``.

Imports nothing of ours but ``aiscale.errors``, and nothing outside the standard library, so
that every part (serving, control loops, policies, the simulator) may depend on it.
"""
