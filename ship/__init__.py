"""ship: the composition root -- the one package that wires ``mobilekd`` (training), ``export`` (files and their
parity gates) and ``benchmarks`` (latency, recall, reports) into single commands.

* ``ship.cli``: the ``mobilekd`` console script (``mobilekd distill|train|embed|evaluate|export|check|bench|report|
  html-report|ship``; ``python -m mobilekd`` is the same), each subcommand handing its arguments to the existing
  module's ``main``.
* ``ship.command``: ``mobilekd ship`` -- from a folder of photos (or a checkpoint) to one checked bundle. Its
  parts: ``plan`` (the checked options), ``stages`` (resumable, timed stages), ``steps`` (each stage's body: one
  existing tool), ``bundle`` (the work folder, the lock, the atomic publish), ``publish`` (assembling the
  bundle), ``manifest`` and ``model_card``.

Layering: mobilekd < export < benchmarks < ship. Nothing below imports ``ship`` except the three-line
``mobilekd/__main__.py`` trampoline that makes ``python -m mobilekd`` run ``ship.cli``.
"""
