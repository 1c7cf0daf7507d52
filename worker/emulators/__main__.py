"""``python -m worker.emulators``: serve the backends emulator (see ``server.main``)."""

from worker.emulators.server import main

if __name__ == "__main__":
    raise SystemExit(main())
