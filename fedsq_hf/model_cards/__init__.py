"""Model card templates (Jinja, for `huggingface_hub.ModelCard.from_template`), shipped inside fedsq_hf."""
