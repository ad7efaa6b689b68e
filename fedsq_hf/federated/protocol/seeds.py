"""Seeds derived from (run seed, round, client): every random draw of a run comes from one of them, so a
result does not depend on which process, site or worker computed it."""

from __future__ import annotations

import numpy as np

__all__ = ["client_seed"]


def client_seed(seed: int, round_: int, client: int = -1) -> int:
    """The seed of (run seed, round, client); `client` -1 stands for the server's own draws of a round."""
    return int(np.random.SeedSequence([seed, round_, client + 1]).generate_state(1)[0])
