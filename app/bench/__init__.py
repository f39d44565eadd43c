"""`vestnik bench`: the figures that matter, each next to its ceiling measured in the same run.

`app.bench.run` runs the suite. This package imports nothing itself: its modules also run
as processes of their own (`python -m vestnik.app.bench.receiver`, `.ceiling_loop`,
`.bare_http`, ...), which then load only what they use.
"""
