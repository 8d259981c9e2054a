"""Replicas: one pool of model replicas over interchangeable backends (local processes, Ray actors).

Deliberately empty of imports: a replica process runs ``python -m aiscale.replicas.process``,
which imports this package first, and must not pay for the gateway or Ray it never uses.
"""
