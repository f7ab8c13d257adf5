"""A loopback stand-in for the Hugging Face Hub's upload API, as huggingface_hub's HfApi speaks it:
create a repo (POST /api/repos/create), check the model card's YAML front matter (POST
/api/validate-yaml: 400 where it is not a YAML mapping), ask how each file is to be uploaded (POST
/api/models/<repo>/preupload/<rev>: here every file "regular", so its bytes travel in the commit),
and commit (POST /api/models/<repo>/commit/<rev>: NDJSON, a header line then one line per file,
base64). It checks the bearer token on every request and keeps what was committed."""
from __future__ import annotations

import base64
import gzip
import hashlib
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlparse


@dataclass
class HubState:
    token: str
    repos: dict[str, dict] = field(default_factory=dict)          # repo id -> {"private": bool}
    files: dict[str, dict[str, bytes]] = field(default_factory=dict)  # repo id -> path -> bytes
    commits: list[dict] = field(default_factory=list)             # the commit header lines
    asked: list[tuple[str, str]] = field(default_factory=list)
    cards: list[dict] = field(default_factory=list)               # model card metadata validated
    refused: int = 0


def serve_hub(token: str) -> tuple[ThreadingHTTPServer, HubState]:
    state = HubState(token)

    class Hub(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def reply(self, code: int, payload: dict) -> None:
            data = json.dumps(payload).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def body(self) -> bytes:
            data = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            return gzip.decompress(data) if self.headers.get("Content-Encoding") == "gzip" else data

        def do_POST(self):
            path = unquote(urlparse(self.path).path)
            state.asked.append(("POST", path))
            if self.headers.get("Authorization") != f"Bearer {state.token}":
                state.refused += 1
                self.body()
                return self.reply(401, {"error": "Invalid credentials in Authorization header"})
            if path == "/api/repos/create":
                ask = json.loads(self.body())
                repo = f"{ask['organization']}/{ask['name']}" if ask.get("organization") else ask["name"]
                state.repos.setdefault(repo, {"private": ask.get("visibility") == "private" or bool(ask.get("private"))})
                state.files.setdefault(repo, {})
                return self.reply(200, {"url": f"http://{self.headers['Host']}/{repo}", "name": repo})
            if path == "/api/validate-yaml":
                import yaml

                content = json.loads(self.body())["content"]
                try:
                    meta = yaml.safe_load(content.split("---", 2)[1]) if content.startswith("---") else {}
                except yaml.YAMLError as e:
                    return self.reply(400, {"error": f"invalid YAML: {e}"})
                if not isinstance(meta, dict):
                    return self.reply(400, {"error": "metadata is not a mapping"})
                state.cards.append(meta)
                return self.reply(200, {"warnings": []})
            parts = path.split("/")
            # /api/models/<org>/<name>/(preupload|commit)/<rev>
            if len(parts) == 7 and parts[1] == "api" and parts[2] == "models" and parts[5] in ("preupload", "commit"):
                repo = f"{parts[3]}/{parts[4]}"
                if repo not in state.repos:
                    self.body()
                    return self.reply(404, {"error": "Repository not found"})
                if parts[5] == "preupload":
                    files = json.loads(self.body())["files"]
                    return self.reply(200, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                                                      for f in files]})
                for raw in self.body().decode().splitlines():
                    line = json.loads(raw)
                    if line["key"] == "header":
                        state.commits.append(line["value"])
                    elif line["key"] == "file":
                        value = line["value"]
                        state.files[repo][value["path"]] = base64.b64decode(value["content"])
                oid = hashlib.sha1(str(len(state.commits)).encode()).hexdigest()
                return self.reply(200, {"commitUrl": f"http://{self.headers['Host']}/{repo}/commit/{oid}",
                                        "commitOid": oid, "pullRequestUrl": None})
            self.body()
            self.reply(404, {"error": f"not served here: {path}"})

    server = ThreadingHTTPServer(("127.0.0.1", 0), Hub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, state
