"""The servers a run measures, each started as a process of its own so its CPU and memory can be read.

Every module here is a runnable server that binds ``127.0.0.1`` on a free port and
prints one JSON line, ``{"port": N}``, once it accepts connections.
"""
