"""The drawing page: draw a character in a browser, see the champion's guesses, keep the drawing.

`kana serve-page` serves `draw_page.html` (plain HTML + JS, nothing from a CDN, so drawings never
leave the machine) and a small JSON API on the standard library's threading HTTP server:

- `GET  /api/classes`  the classes the page offers under "Save as";
- `POST /api/predict`  `{"strokes": {"1": [[x, y], ...], ...}}` -> `{"guesses": [top 5]}`, from the
  champion loaded in process or from a running `mlflow models serve` (`--server-url`);
- `POST /api/save`     `{"strokes": ..., "char_id": ..., "contributor": ...}` -> writes
  `<raw_dir>/<contributor>/<char_id><n>.pickle` (the app's format, read back by the same safe
  loader as all raw data) and a `.json` twin, never overwriting a file.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import signal
import threading
import urllib.error
import urllib.request
from contextlib import closing, contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from kana.classes import ALL_CLASSES, get_class
from kana.strokes import InvalidSample, check_stroke_count, parse_strokes, strokes_to_app_dict

PAGE = Path(__file__).with_name("draw_page.html")
MAX_BODY_BYTES = 2 * 1024 * 1024
CONTRIBUTOR_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}")


class BadRequest(ValueError):
    """A request the page should show as an error (HTTP 400) with this message."""


class ModelServerFailed(RuntimeError):
    """The model server behind the page did not answer, or failed (HTTP 502, with this message)."""


# --------------------------------------------------------------------------- predicting


class InProcessGuesser:
    """The champion as a pyfunc in this process. Its files are copied into a temporary folder
    kept while the page runs (the models' child process, where one is used, starts from them)
    and removed by `close`: loaded from a remote store without one, MLflow leaves its copy in
    the temp folder for good."""

    def __init__(self, model_uri: str):
        import tempfile

        import mlflow

        self._files = tempfile.TemporaryDirectory(prefix="kana-page-model-")
        try:
            self.model = mlflow.pyfunc.load_model(model_uri, dst_path=self._files.name)
        except BaseException:
            self._files.cleanup()
            raise

    def close(self) -> None:
        self._files.cleanup()

    def guesses(self, sample: dict) -> list[dict]:
        from mlflow.exceptions import MlflowException

        try:
            row = self.model.predict([sample])[0]
        except MlflowException as exc:
            raise BadRequest(exc.message) from None
        return _top5(row)


class RemoteGuesser:
    """A running `mlflow models serve` (its base URL), asked over HTTP."""

    def __init__(self, server_url: str, timeout: float = 10.0):
        self.url = server_url.rstrip("/") + "/invocations"
        self.timeout = timeout

    def close(self) -> None:
        """Nothing to release: each guess is a request of its own."""

    def guesses(self, sample: dict) -> list[dict]:
        req = urllib.request.Request(
            self.url, data=json.dumps({"inputs": [sample]}).encode(),
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                answer = resp.read()
        except urllib.error.HTTPError as err:
            try:
                message = json.loads(err.read()).get("message", str(err))
            except Exception:
                message = str(err)
            if 400 <= err.code < 500:  # the drawing was refused
                raise BadRequest(f"model server: {message}") from None
            raise ModelServerFailed(f"model server at {self.url} failed: {message}") from None
        except OSError as err:  # URLError (refused, unreachable) and timeouts
            reason = getattr(err, "reason", err)
            raise ModelServerFailed(f"model server at {self.url} did not answer: {reason}") from None
        try:
            return _top5(json.loads(answer)["predictions"][0])
        except (ValueError, LookupError, TypeError):
            raise ModelServerFailed(
                f"model server at {self.url} answered no predictions: {answer[:200]!r}") from None


def _top5(row) -> list[dict]:
    return [
        {"char_id": c, "character": ch, "probability": float(p)}
        for c, ch, p in zip(row["top5_char_ids"], row["top5_characters"], row["top5_probabilities"])
    ]


# --------------------------------------------------------------------------- saving


def save_drawing(raw_dir: str | Path, contributor: str, char_id: str, strokes_json) -> Path:
    """Write one drawing as `<raw_dir>/<contributor>/<char_id><n>.pickle` plus a `.json` twin.

    The sample is checked the way training will read it (points, bounds, the class's stroke
    count), so what is saved is what `preprocess` keeps. `n` is the first free number, and the
    files are created exclusively, so two saves at once never overwrite each other.
    """
    if not isinstance(contributor, str) or not CONTRIBUTOR_PATTERN.fullmatch(contributor):
        raise BadRequest(
            "contributor: use 1-64 letters, digits, '_', '-' or '.', starting with a letter or digit"
        )
    try:
        kana_class = get_class(char_id)
    except (KeyError, TypeError):
        raise BadRequest(f"char_id: {char_id!r} is not a class kana knows") from None
    try:
        strokes = parse_strokes(strokes_json, "drawing")
        check_stroke_count(strokes, char_id, "drawing")
    except InvalidSample as exc:
        raise BadRequest(str(exc)) from None
    folder = Path(raw_dir) / contributor
    folder.mkdir(parents=True, exist_ok=True)
    app_dict = strokes_to_app_dict(strokes)
    as_json = json.dumps(
        {"char_id": kana_class.char_id,
         "strokes": {str(k): v.tolist() for k, v in app_dict.items()}},
    ).encode()
    existing = [p.stem[len(char_id):] for p in folder.glob(f"{char_id}*")]
    n = 1 + max((int(s) for s in existing if s.isdigit()), default=0)
    while True:
        path = folder / f"{char_id}{n:05d}.pickle"
        try:
            with open(path, "xb") as fh:  # exclusive: never overwrites
                pickle.dump(app_dict, fh, protocol=4)
        except FileExistsError:
            n += 1
            continue
        try:
            with open(path.with_suffix(".json"), "xb") as fh:
                fh.write(as_json)
        except FileExistsError:
            pass  # a stray JSON of that name stays as it was; the pickle is the sample
        return path


# --------------------------------------------------------------------------- the server


def make_server(guesser, raw_dir: str | Path, host: str = "127.0.0.1", port: int = 8765,
                contributor: str = "") -> ThreadingHTTPServer:
    """The page's HTTP server (not started)."""
    page = PAGE.read_bytes()
    classes = [{"char_id": c.char_id, "character": c.character, "romanization": c.romanization}
               for c in ALL_CLASSES]

    class Handler(BaseHTTPRequestHandler):
        server_version = "kana-page"

        def log_message(self, fmt, *args):  # one short line per request
            print(f"{self.address_string()} {fmt % args}")

        def _send(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.send_header("Content-Security-Policy", "default-src 'self'; script-src 'unsafe-inline'; "
                             "style-src 'unsafe-inline'; connect-src 'self'")
            self.end_headers()
            self.wfile.write(body)

        def _json(self, status: int, obj) -> None:
            self._send(status, json.dumps(obj, ensure_ascii=False).encode(), "application/json")

        def do_GET(self):
            if self.path in ("/", "/index.html"):
                self._send(200, page, "text/html; charset=utf-8")
            elif self.path == "/api/classes":
                self._json(200, {"classes": classes, "contributor": contributor})
            else:
                self._json(404, {"error": f"no page at {self.path}"})

        def do_POST(self):
            try:
                body = self._read_json()
                if self.path == "/api/predict":
                    self._json(200, {"guesses": guesser.guesses(body.get("strokes"))})
                elif self.path == "/api/save":
                    path = save_drawing(raw_dir, body.get("contributor"), body.get("char_id"),
                                        body.get("strokes"))
                    self._json(200, {"path": str(path)})
                else:
                    self._json(404, {"error": f"no API at {self.path}"})
            except BadRequest as exc:
                self._json(400, {"error": str(exc)})
            except ModelServerFailed as exc:
                self._json(502, {"error": str(exc)})
            except Exception as exc:  # keep serving; say what happened
                self._json(500, {"error": f"{type(exc).__name__}: {exc}"})

        def _read_json(self) -> dict:
            declared = self.headers.get("Content-Length") or "0"
            try:
                length = int(declared)
            except ValueError:
                length = -1
            if length < 0:  # read(-1) would wait until the client hangs up
                raise BadRequest(f"Content-Length {declared!r} is not a number of bytes")
            if length > MAX_BODY_BYTES:
                raise BadRequest(f"request of {length} bytes (at most {MAX_BODY_BYTES})")
            try:
                body = json.loads(self.rfile.read(length) or b"{}")
            except ValueError as exc:  # not UTF-8, not JSON, or a number of over 4,300 digits
                raise BadRequest(f"request is not JSON ({exc})") from None
            except RecursionError:
                raise BadRequest("request JSON is nested too deeply to read") from None
            if not isinstance(body, dict):
                raise BadRequest("request must be a JSON object")
            return body

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    return server


def serve_page(
    model_uri: str = "models:/kana-classifier@champion",
    server_url: str = "",
    raw_dir: str = "data/raw",
    contributor: str = "",
    host: str = "127.0.0.1",
    port: int = 8765,
) -> None:
    """Serve the drawing page: draw a character, see the champion's guesses, save the drawing as
    training data.

    Parameters:

    - `model_uri`: the model that guesses, loaded in this process.
    - `server_url`: the base URL of a running `mlflow models serve` to ask instead ("": none).
    - `raw_dir`: where drawings are saved, as `<raw_dir>/<contributor>/<char_id><n>.pickle`.
    - `contributor`: the contributor the page's form starts with ("": $USER).
    - `host`: the address to listen on (127.0.0.1: this machine alone).
    - `port`: the port to listen on.
    """
    guesser = RemoteGuesser(server_url) if server_url else InProcessGuesser(model_uri)
    with closing(guesser):
        try:
            server = make_server(guesser, raw_dir, host, port, contributor or os.environ.get("USER", ""))
        except OSError as exc:  # the port is taken, or the host is not this machine's
            raise SystemExit(f"kana serve-page: cannot listen on {host}:{port} ({exc.strerror or exc}); "
                             "choose another --port or --host") from None
        print(f"kana drawing page on http://{host}:{server.server_address[1]}/ "
              f"(guesses from {server_url or model_uri}; drawings saved under {raw_dir})", flush=True)
        try:
            with _sigterm_stops_like_ctrl_c():
                server.serve_forever()
        except KeyboardInterrupt:
            pass
        finally:
            server.server_close()


@contextmanager
def _sigterm_stops_like_ctrl_c():
    """`kill` (or a service manager stopping the page) ends it as Ctrl-C does, through its
    `finally`s, so the champion's temporary copy is removed. Only the main thread sets handlers."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)

