"""Command lines and the arguments they take: `fedsq-federated` (the simulator) and `fedsq-gate-drift`."""

from .arguments import (DERIVED_RESUME_KEYS, DataArguments, FederatedArguments, ModelArguments, parse_arguments,
                        resume_marks, run_config, with_example_defaults)
from .checks import check_run
from .option_flags import OPTION_FLAGS, OptionFlag, check_option_flags, unread_flags
from .privacy_arguments import PrivacyArguments

__all__ = ["ModelArguments", "DataArguments", "FederatedArguments", "parse_arguments", "run_config", "resume_marks",
           "with_example_defaults", "check_run", "DERIVED_RESUME_KEYS", "OPTION_FLAGS", "OptionFlag", "check_option_flags",
           "unread_flags", "PrivacyArguments"]
