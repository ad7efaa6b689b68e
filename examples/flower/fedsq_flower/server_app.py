"""The server: fedsq-hf's ServerApp (its arguments come from this app's run config)."""

from fedsq_hf.flower.server_app import app as _app

app = _app
