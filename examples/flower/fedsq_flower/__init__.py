"""A Flower app of fedsq-hf's own ClientApp and ServerApp (see README, "Deploy with Flower")."""
