"""``provisioning``, the console script (SPEC §5).

* ``console``: ``main``, which parses, loads the command's module, map errors to exit codes;
* ``parser``: every command and option; ``common``: exit codes, argument types, confirm;
* ``render``: records, history, failed entries and the audit log for a person;
* one module per command group: ``records`` (show, list, history), ``submit``, ``failed``
  (list, show, audit), ``operate`` (replay, discard), ``health``, ``diagram``,
  ``dataverse``, ``demo``, ``http`` (token, serve: the HTTP API).
"""

from worker.cli.console import main

__all__ = ["main"]
