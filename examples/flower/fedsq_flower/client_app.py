"""Each site: fedsq-hf's ClientApp (its data, backbone and state dir come from the SuperNode's --node-config)."""

from fedsq_hf.flower.client_app import app as _app

app = _app
