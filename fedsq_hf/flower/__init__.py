"""FedSQ on Flower (`pip install "fedsq-hf[flower]"`): a `ClientApp` per site and a `ServerApp` running the
library's own round loop, for `flwr run` on a SuperLink with one SuperNode per site."""

try:
    import flwr  # noqa: F401
except ImportError as err:
    from ..errors import FedSQError

    raise FedSQError('fedsq_hf.flower needs Flower: pip install "fedsq-hf[flower]" (Python >= 3.11).') from err

from .records import SiteTask, read_update_content, update_content
from .run_config import REQUIRED_KEYS, FlowerArguments, RunArguments, parse_run_config
from .server import FlowerServer
from .server_app import build_server
from .site import Site, SiteConfig

__all__ = ["FlowerServer", "build_server", "Site", "SiteConfig", "SiteTask", "FlowerArguments", "RunArguments",
           "parse_run_config", "REQUIRED_KEYS", "update_content", "read_update_content"]
