"""`python -m stages.browse`: serve gt.db read-only in Datasette on 127.0.0.1 (gt.core.browse
builds the metadata; this file parses, prints and maps errors to exit codes, stages/kit.py)."""
from __future__ import annotations

import signal
from pathlib import Path
import sys
from typing import Sequence

from gt.core.browse import BrowseOptions, database_name, prepare, serve
from gt.core.errors import Range
from stages import kit


def build_parser() -> kit.Parser:
    p = kit.parser("browse", "Serve gt.db read-only in Datasette on 127.0.0.1, with titled tables, column descriptions "
                             "and canned queries (coverage by dimension, most disagreeing articles, labels of one "
                             "article across oracles, cost per run). Stop with Ctrl-C.", common=("db",))
    p.add_argument("--port", type=kit.number(Range(low=1, high=65535, whole=True)), help="port on 127.0.0.1 (default: %(default)s)")
    p.add_argument("--metadata-out", help="also write the generated metadata (JSON) to this file, e.g. to serve it "
                                          "with your own `datasette` command")
    return p


def parse_options(argv: Sequence[str] | None = None) -> BrowseOptions:
    return kit.options(build_parser(), BrowseOptions, argv)


def main(argv: Sequence[str] | None = None) -> int:
    def work(opts: BrowseOptions) -> int:
        text = prepare(opts)
        db, port, name = Path(opts.db), opts.port, database_name(opts.db)
        print(f"Serving {db} read-only at http://127.0.0.1:{port}/{name} "
              f"(canned queries: http://127.0.0.1:{port}/{name}#queries); Ctrl-C stops.", flush=True)
        rc = serve(db, text, port)
        if rc not in (0, -signal.SIGTERM, -signal.SIGINT):
            return kit.fail(f"Datasette exited with code {rc}, {db} (is port {port} free? try --port)")
        print(f"Stopped serving {db}.")
        return 0
    return kit.run(lambda: parse_options(argv), work)


if __name__ == "__main__":
    sys.exit(main())
