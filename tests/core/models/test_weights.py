"""Tests of desra_core.models.weights against a real HTTP server on 127.0.0.1 (no internet)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import struct
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace

import pytest

from desra_core.errors import ConfigError, ModelLoadError
from desra_core.models import weights
from desra_core.models.weights import KNOWN_WEIGHTS, KnownWeights, cache_dir, load_table, resolve_weights

BODY = os.urandom(2_500_000)  # three chunks of the 1 MiB reader
SHA = hashlib.sha256(BODY).hexdigest()
REQUIRED = {"realesrnet_x4plus", "realesrgan_x4plus", "realesr_general_x4v3", "swinir_realsr_x4_psnr",
            "swinir_realsr_x4_gan"}


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):  # the handlers below fail on purpose
        pass


def _send_head(handler: BaseHTTPRequestHandler, length: int | None) -> None:
    handler.send_response(200)
    handler.send_header("Content-Type", "application/octet-stream")
    if length is not None:
        handler.send_header("Content-Length", str(length))
    handler.end_headers()


def serve(body: bytes):
    def route(handler):
        _send_head(handler, len(body))
        handler.wfile.write(body)
    return route


def truncated(body: bytes):
    """Claims the whole body, sends half of it, then closes the connection."""
    def route(handler):
        _send_head(handler, len(body))
        handler.wfile.write(body[: len(body) // 2])
        handler.wfile.flush()
        handler.close_connection = True
    return route


def reset_midway(body: bytes):
    """Sends half of the body, then raises; the socket is closed with a reset (SO_LINGER 0)."""
    def route(handler):
        _send_head(handler, len(body))
        handler.wfile.write(body[: len(body) // 2])
        handler.wfile.flush()
        handler.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        raise RuntimeError("server failure in the middle of the body")
    return route


def slow(body: bytes, delay: float):
    def route(handler):
        time.sleep(delay)
        serve(body)(handler)
    return route


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    for var in ("DESRA_OFFLINE", "DESRA_ALLOW_UNVERIFIED", "DESRA_CACHE", "XDG_CACHE_HOME"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")


@pytest.fixture
def server():
    routes, hits = {}, []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            hits.append(self.path)
            route = routes.get(self.path)
            if route is None:
                self.send_error(404)
                return
            route(self)

        def log_message(self, format, *args):
            pass

    httpd = _QuietServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield SimpleNamespace(base=f"http://127.0.0.1:{httpd.server_address[1]}", routes=routes, hits=hits)
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=5)


def entry(url: str, sha256: str | None = SHA, name: str = "tiny", file: str = "tiny.pth") -> KnownWeights:
    return KnownWeights(name=name, url=url, sha256=sha256, scale=4, role="gan", architecture="ESRGAN", file=file,
                        note="test entry")


def table_for(server, route, sha256: str | None = SHA) -> dict[str, KnownWeights]:
    server.routes["/tiny.pth"] = route
    return {"tiny": entry(f"{server.base}/tiny.pth", sha256)}


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


# --- downloads -------------------------------------------------------------------------------------------


def test_download_writes_verified_file_and_sidecar_then_uses_the_cache(server, tmp_path):
    table = table_for(server, serve(BODY))
    seen = []
    path = resolve_weights("tiny", table=table, cache=tmp_path, progress=lambda d, t: seen.append((d, t)))
    assert path == tmp_path / "tiny.pth"
    assert path.read_bytes() == BODY
    record = json.loads((tmp_path / "tiny.pth.sha256").read_text())
    assert record == {"sha256": SHA, "size": len(BODY), "mtime_ns": path.stat().st_mtime_ns}
    assert leftovers(tmp_path) == ["tiny.pth", "tiny.pth.sha256"]
    assert seen[0] == (0, len(BODY)) and seen[-1] == (len(BODY), len(BODY))
    assert server.hits == ["/tiny.pth"]

    again = resolve_weights("tiny", table=table, cache=tmp_path)
    assert again == path
    assert server.hits == ["/tiny.pth"]  # no second request


def test_cached_file_with_current_sidecar_is_not_hashed_again(server, tmp_path, monkeypatch):
    table = table_for(server, serve(BODY))
    resolve_weights("tiny", table=table, cache=tmp_path)

    def no_hashing(path):
        raise AssertionError("the file was hashed again")

    monkeypatch.setattr(weights, "_hash_file", no_hashing)
    assert resolve_weights("tiny", table=table, cache=tmp_path) == tmp_path / "tiny.pth"


def test_bad_checksum_names_both_digests_and_leaves_nothing(server, tmp_path):
    wrong = "0" * 64
    table = table_for(server, serve(BODY), sha256=wrong)
    with pytest.raises(ModelLoadError) as info:
        resolve_weights("tiny", table=table, cache=tmp_path)
    assert wrong in str(info.value) and SHA in str(info.value)
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("route", [truncated, reset_midway], ids=["short-body", "reset"])
def test_interrupted_download_fails_and_leaves_nothing(server, tmp_path, route):
    table = table_for(server, route(BODY))
    with pytest.raises(ModelLoadError, match=r"expected to download tiny\.pth") as info:
        resolve_weights("tiny", table=table, cache=tmp_path)
    assert str(tmp_path / "tiny.pth") in str(info.value)
    assert leftovers(tmp_path) == []


def test_keyboard_interrupt_during_download_removes_the_temp_file(server, tmp_path):
    table = table_for(server, serve(BODY))

    def interrupt(done, total):
        if done > 0:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        resolve_weights("tiny", table=table, cache=tmp_path, progress=interrupt)
    assert leftovers(tmp_path) == []


def test_http_error_is_reported_with_url_and_destination(server, tmp_path):
    table = {"tiny": entry(f"{server.base}/missing.pth")}
    with pytest.raises(ModelLoadError, match="HTTP error 404") as info:
        resolve_weights("tiny", table=table, cache=tmp_path)
    assert f"{server.base}/missing.pth" in str(info.value)
    assert leftovers(tmp_path) == []


def test_timeout_is_reported(server, tmp_path):
    table = table_for(server, slow(BODY, 1.0))
    with pytest.raises(ModelLoadError, match=r"no answer within 0\.2 s"):
        resolve_weights("tiny", table=table, cache=tmp_path, timeout=0.2)
    assert leftovers(tmp_path) == []


def test_concurrent_downloads_of_one_file_give_one_intact_file(server, tmp_path):
    table = table_for(server, serve(BODY))
    results, errors = [], []

    def fetch():
        try:
            results.append(resolve_weights("tiny", table=table, cache=tmp_path))
        except Exception as exc:  # collected for the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=fetch) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert set(results) == {tmp_path / "tiny.pth"}
    assert (tmp_path / "tiny.pth").read_bytes() == BODY
    assert leftovers(tmp_path) == ["tiny.pth", "tiny.pth.sha256"]


# --- offline and unreachable -----------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["env", "argument"])
def test_offline_explains_where_to_put_the_file_and_makes_no_request(server, tmp_path, monkeypatch, how):
    table = table_for(server, serve(BODY))
    if how == "env":
        monkeypatch.setenv("DESRA_OFFLINE", "1")
    with pytest.raises(ModelLoadError) as info:
        resolve_weights("tiny", table=table, cache=tmp_path, offline=True if how == "argument" else None)
    message = str(info.value)
    assert f"{server.base}/tiny.pth" in message
    assert str(tmp_path / "tiny.pth") in message
    assert "DESRA_CACHE" in message and "offline" in message
    assert server.hits == []


def test_offline_still_uses_a_cached_file(server, tmp_path):
    table = table_for(server, serve(BODY))
    resolve_weights("tiny", table=table, cache=tmp_path)
    assert resolve_weights("tiny", table=table, cache=tmp_path, offline=True) == tmp_path / "tiny.pth"
    assert server.hits == ["/tiny.pth"]


def test_unreachable_server_gives_the_same_clear_error(tmp_path):
    with socket.socket() as sock:  # a port that was free a moment ago and has no listener now
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/tiny.pth"
    with pytest.raises(ModelLoadError, match="network error") as info:
        resolve_weights("tiny", table={"tiny": entry(url)}, cache=tmp_path, timeout=5)
    assert url in str(info.value) and str(tmp_path / "tiny.pth") in str(info.value)
    assert "DESRA_CACHE" in str(info.value)
    assert leftovers(tmp_path) == []


# --- the cache ---------------------------------------------------------------------------------------------


def test_modified_cached_file_is_detected(server, tmp_path):
    table = table_for(server, serve(BODY))
    path = resolve_weights("tiny", table=table, cache=tmp_path)
    path.write_bytes(b"X" + BODY[1:])  # same size, new mtime
    with pytest.raises(ModelLoadError, match="delete it") as info:
        resolve_weights("tiny", table=table, cache=tmp_path)
    assert SHA in str(info.value) and str(path) in str(info.value)
    assert server.hits == ["/tiny.pth"]


def test_touched_but_unchanged_file_is_reverified(server, tmp_path):
    table = table_for(server, serve(BODY))
    path = resolve_weights("tiny", table=table, cache=tmp_path)
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))  # same bytes, new mtime
    assert resolve_weights("tiny", table=table, cache=tmp_path) == path  # re-verified, sidecar refreshed
    assert json.loads((tmp_path / "tiny.pth.sha256").read_text())["mtime_ns"] == path.stat().st_mtime_ns


def test_file_placed_by_hand_is_verified(server, tmp_path):
    table = table_for(server, serve(BODY))
    (tmp_path / "tiny.pth").write_bytes(BODY)
    assert resolve_weights("tiny", table=table, cache=tmp_path, offline=True) == tmp_path / "tiny.pth"
    assert json.loads((tmp_path / "tiny.pth.sha256").read_text())["sha256"] == SHA
    (tmp_path / "tiny.pth").write_bytes(b"not the weights")
    with pytest.raises(ModelLoadError, match="expected sha256"):
        resolve_weights("tiny", table=table, cache=tmp_path, offline=True)


def test_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home" / ".cache" / "desra" / "weights"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "desra" / "weights"
    monkeypatch.setenv("DESRA_CACHE", str(tmp_path / "mine"))
    assert cache_dir() == tmp_path / "mine" / "weights"


def test_default_cache_is_used_when_none_is_given(server, tmp_path, monkeypatch):
    monkeypatch.setenv("DESRA_CACHE", str(tmp_path))
    path = resolve_weights("tiny", table=table_for(server, serve(BODY)))
    assert path == tmp_path / "weights" / "tiny.pth" and path.read_bytes() == BODY


# --- names and paths ----------------------------------------------------------------------------------------


def test_unknown_name_lists_the_known_names(tmp_path):
    table = {"alpha": entry("https://example.invalid/a.pth", name="alpha", file="a.pth"),
             "beta": entry("https://example.invalid/b.pth", name="beta", file="b.pth")}
    with pytest.raises(ModelLoadError, match=r"\(alpha, beta\), got 'gamma'"):
        resolve_weights("gamma", table=table, cache=tmp_path)


def test_existing_path_is_returned_as_is(tmp_path):
    model = tmp_path / "anything.bin"
    model.write_bytes(b"not even weights")
    assert resolve_weights(model, table={}) == model
    assert resolve_weights(str(model), table={}) == model


@pytest.mark.parametrize("given", ["nowhere/model.pth", "model.safetensors", "weights.ckpt"])
def test_missing_path_raises(tmp_path, monkeypatch, given):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelLoadError, match="expected a model file, got a missing path"):
        resolve_weights(given, table=KNOWN_WEIGHTS)


def test_missing_pathlike_raises(tmp_path):
    with pytest.raises(ModelLoadError, match="missing path"):
        resolve_weights(tmp_path / "realesrgan_x4plus", table=KNOWN_WEIGHTS)


def test_directory_is_refused(tmp_path):
    with pytest.raises(ModelLoadError, match="got a directory"):
        resolve_weights(tmp_path, table={})


def test_non_positive_timeout_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="positive timeout"):
        resolve_weights("tiny", table={}, cache=tmp_path, timeout=0)


# --- entries without a pinned hash ---------------------------------------------------------------------------


def test_entry_without_sha256_is_refused_by_default(server, tmp_path):
    table = table_for(server, serve(BODY), sha256=None)
    with pytest.raises(ModelLoadError, match="DESRA_ALLOW_UNVERIFIED=1"):
        resolve_weights("tiny", table=table, cache=tmp_path)
    assert server.hits == [] and leftovers(tmp_path) == []


def test_entry_without_sha256_is_accepted_and_recorded_when_allowed(server, tmp_path, monkeypatch):
    monkeypatch.setenv("DESRA_ALLOW_UNVERIFIED", "1")
    table = table_for(server, serve(BODY), sha256=None)
    path = resolve_weights("tiny", table=table, cache=tmp_path)
    assert path.read_bytes() == BODY
    assert json.loads((tmp_path / "tiny.pth.sha256").read_text())["sha256"] == SHA
    assert resolve_weights("tiny", table=table, cache=tmp_path) == path
    assert server.hits == ["/tiny.pth"]
    path.write_bytes(b"Y" + BODY[1:])  # changed after its hash was recorded
    with pytest.raises(ModelLoadError, match=SHA):
        resolve_weights("tiny", table=table, cache=tmp_path)
    monkeypatch.delenv("DESRA_ALLOW_UNVERIFIED")
    with pytest.raises(ModelLoadError, match="DESRA_ALLOW_UNVERIFIED"):
        resolve_weights("tiny", table=table, cache=tmp_path)


# --- the table -------------------------------------------------------------------------------------------------


def test_shipped_table_is_well_formed():
    raw = json.loads((Path(weights.__file__).parents[1] / "data" / "known_weights.json").read_text())
    names = [item["name"] for item in raw]
    assert len(names) == len(set(names)) == len(KNOWN_WEIGHTS)
    assert REQUIRED <= set(KNOWN_WEIGHTS)
    files = [w.file for w in KNOWN_WEIGHTS.values()]
    assert len(files) == len(set(files))
    for name, w in KNOWN_WEIGHTS.items():
        assert w.name == name
        assert w.url.startswith("https://") and w.url.endswith("/" + w.file), name
        assert w.scale == 4, name
        assert w.role in {"mse", "gan"}, name
        assert w.sha256 is None or re.fullmatch(r"[0-9a-f]{64}", w.sha256), name
        assert w.note.strip(), name
        if w.sha256 is None:
            assert "sha256" in w.note.lower(), name
    roles = {name: KNOWN_WEIGHTS[name].role for name in REQUIRED}
    assert roles == {"realesrnet_x4plus": "mse", "realesrgan_x4plus": "gan", "realesr_general_x4v3": "gan",
                     "swinir_realsr_x4_psnr": "mse", "swinir_realsr_x4_gan": "gan"}


@pytest.mark.parametrize("bad", [
    {"role": "l1"}, {"sha256": "ABC"}, {"scale": 0}, {"url": "ftp://x/y.pth"}, {"file": "../up.pth"},
    {"name": "a/b"},
])
def test_invalid_entries_are_refused(bad):
    fields = {"name": "x", "url": "https://example.invalid/x.pth", "sha256": None, "scale": 4, "role": "gan",
              "architecture": "ESRGAN", "file": "x.pth", "note": "n"} | bad
    with pytest.raises(ConfigError):
        KnownWeights(**fields)


def test_load_table_refuses_duplicates_and_unknown_fields(tmp_path):
    item = {"name": "x", "url": "https://example.invalid/x.pth", "sha256": None, "scale": 4, "role": "gan",
            "architecture": "ESRGAN", "file": "x.pth", "note": "n"}
    dup = tmp_path / "dup.json"
    dup.write_text(json.dumps([item, item]))
    with pytest.raises(ConfigError, match="twice"):
        load_table(dup)
    extra = tmp_path / "extra.json"
    extra.write_text(json.dumps([item | {"sha1": "nope"}]))
    with pytest.raises(ConfigError, match="sha1"):
        load_table(extra)
    with pytest.raises(ConfigError, match="expected a JSON list"):
        load_table(tmp_path / "absent.json")
