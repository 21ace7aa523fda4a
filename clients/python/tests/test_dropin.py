"""The bot's `app/services/event_emitter.py` reduced to one import line:
every way the bot uses its emitter keeps working."""

from __future__ import annotations

import inspect
import subprocess
import sys
import textwrap
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1]


def test_the_bots_module_becomes_one_import_line(tmp_path: Path) -> None:
    services = tmp_path / "app" / "services"
    services.mkdir(parents=True)
    (tmp_path / "app" / "__init__.py").write_text("")
    (services / "__init__.py").write_text("")
    (services / "event_emitter.py").write_text(
        "from bedolaga_events import event_emitter, EventEmitter  # noqa: F401\n"
    )
    script = textwrap.dedent(
        """
        import inspect
        import bedolaga_events
        from app.services.event_emitter import event_emitter, EventEmitter
        assert event_emitter is bedolaga_events.event_emitter
        assert isinstance(event_emitter, EventEmitter)
        # The bot's calls: sync on/off/register/unregister, async emit(type, payload, db=None).
        for name in ("on", "off", "register_websocket", "unregister_websocket"):
            assert not inspect.iscoroutinefunction(getattr(event_emitter, name)), name
        assert inspect.iscoroutinefunction(event_emitter.emit)
        params = list(inspect.signature(event_emitter.emit).parameters)
        assert params[:3] == ["event_type", "payload", "db"], params
        assert inspect.signature(event_emitter.emit).parameters["db"].default is None
        # Registering outside a running loop must not fail (nothing starts).
        class S:
            async def send_text(self, text): pass
        s = S()
        event_emitter.register_websocket(s)
        assert event_emitter.websocket_count == 1
        event_emitter.unregister_websocket(s)
        event_emitter.unregister_websocket(s)
        assert event_emitter.websocket_count == 0
        print("ok")
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script],
        cwd=tmp_path,
        env={"PYTHONPATH": f"{tmp_path}:{PACKAGE}", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_emit_and_listener_signatures_match_the_bots() -> None:
    from bedolaga_events import EventEmitter

    assert list(inspect.signature(EventEmitter.on).parameters) == ["self", "event_type", "callback"]
    assert list(inspect.signature(EventEmitter.off).parameters) == ["self", "event_type", "callback"]
    assert list(inspect.signature(EventEmitter.register_websocket).parameters) == ["self", "websocket"]
