"""``python -m mobilekd``: the ``mobilekd`` command (subcommands distill, train, ..., ship), defined in ``ship.cli``."""
if __name__ == "__main__":
    from ship.cli import main

    raise SystemExit(main())
