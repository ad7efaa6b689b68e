"""What the Hub accepts as names, checked before anything loads: repo ids, branch names (a push's revision)
and license ids (a card's `license:`)."""

from __future__ import annotations

import difflib
import re

from .errors import FedSQError

__all__ = ["HUB_LICENSES", "check_repo_id", "check_branch_name", "check_license"]

# The license ids the Hub accepts in a card's `license:` field, as listed (in this order) on
# https://huggingface.co/docs/hub/repositories-licenses (huggingface/hub-docs, docs/hub/repositories-licenses.md,
# snapshot of 2026-08-22). huggingface_hub holds no such list: the Hub checks the card only when it is committed.
HUB_LICENSES = (
    "apache-2.0", "mit", "openrail", "bigscience-openrail-m", "creativeml-openrail-m", "bigscience-bloom-rail-1.0",
    "bigcode-openrail-m", "afl-3.0", "artistic-2.0", "bsl-1.0", "bsd", "bsd-2-clause", "bsd-3-clause",
    "bsd-3-clause-clear", "c-uda", "cc", "cc0-1.0", "cc-by-2.0", "cc-by-2.5", "cc-by-3.0", "cc-by-4.0", "cc-by-sa-3.0",
    "cc-by-sa-4.0", "cc-by-nc-2.0", "cc-by-nc-3.0", "cc-by-nc-4.0", "cc-by-nd-4.0", "cc-by-nc-nd-3.0", "cc-by-nc-nd-4.0",
    "cc-by-nc-sa-2.0", "cc-by-nc-sa-3.0", "cc-by-nc-sa-4.0", "cdla-sharing-1.0", "cdla-permissive-1.0",
    "cdla-permissive-2.0", "wtfpl", "ecl-2.0", "epl-1.0", "epl-2.0", "etalab-2.0", "eupl-1.1", "eupl-1.2", "agpl-3.0",
    "gfdl", "gpl", "gpl-2.0", "gpl-3.0", "lgpl", "lgpl-2.1", "lgpl-3.0", "isc", "h-research", "intel-research",
    "lppl-1.3c", "ms-pl", "apple-ascl", "apple-amlr", "mpl-2.0", "odc-by", "odbl", "openmdw-1.0", "openmdw-1.1",
    "openrail++", "osl-3.0", "postgresql", "ofl-1.1", "ncsa", "unlicense", "zlib", "pddl", "lgpl-lr",
    "deepfloyd-if-license", "fair-noncommercial-research-license", "llama2", "llama3", "llama3.1", "llama3.2",
    "llama3.3", "llama4", "grok2-community", "gemma", "unknown", "other",
)


def check_repo_id(repo_id: str, what: str = "repo_id") -> None:
    """Raise `FedSQError` (naming `what`) unless `repo_id` is a Hub repo id (huggingface_hub's own check)."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as err:
        why = str(err).replace(" Use `repo_type` argument if needed.", "")
        raise FedSQError(f"{what} {repo_id!r} is not a Hub repo id ({why}); use namespace/name, e.g. "
                         "my-org/fedsq-cifar10.") from None


_REF_FORBIDDEN = set(" ~^:?*[\\")


def check_branch_name(name: str, what: str = "revision") -> None:
    """Raise `FedSQError` (naming `what`) unless `name` is a git branch name, by the rules of
    `git check-ref-format --branch`."""
    why = []
    bad = [seq for seq in ("..", "@{", "//") if seq in name]
    bad += sorted({c for c in name if c in _REF_FORBIDDEN or ord(c) < 32 or ord(c) == 127})
    if bad:
        why.append("it contains " + ", ".join(map(repr, bad)))
    if name.startswith(("-", "/")):
        why.append(f"it starts with {name[0]!r}")
    if name.endswith(("/", ".")):
        why.append(f"it ends with {name[-1]!r}")
    if any(part.startswith(".") or part.endswith(".lock") for part in name.split("/")):
        why.append("a part of it starts with '.' or ends with '.lock'")
    if not name or name == "@":
        why = ["it is empty" if not name else "'@' alone is not a branch name"]
    if why:
        raise FedSQError(f"{what} {name!r} is not a valid git branch name ({'; '.join(why)}): use "
                         "letters, digits and '-', '_', '.', '/' between them, e.g. 'runs' or 'exp/alpha-0.1'.")


def check_license(license: str, what: str = "license") -> None:
    """Raise `FedSQError` (naming `what`, suggesting the closest id and `other`) unless `license` is in
    `HUB_LICENSES`."""
    if license in HUB_LICENSES:
        return
    key = re.sub(r"[-_ ]*licen[cs]e$", "", license.strip().lower())  # "mit-license": mit, "my-own-license": none
    close = difflib.get_close_matches(key, HUB_LICENSES, n=1, cutoff=0.7) if key else []
    other = "'other' for a license not on that list (and add its text to the repo as a LICENSE file)"
    if not license.strip():
        raise FedSQError(f"{what} is empty: give a license id the Hub accepts "
                         f"(https://huggingface.co/docs/hub/repositories-licenses), e.g. 'apache-2.0', or {other}.")
    hint = f"Did you mean {close[0]!r}? Or use {other}" if close else f"Use {other}"
    raise FedSQError(f"{what} {license!r} is not a license id the Hub accepts "
                     f"(https://huggingface.co/docs/hub/repositories-licenses). {hint}.")
