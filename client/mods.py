"""A Flower client mod: what leaves a site when its ClientApp fails is a reason code and a short message.

Any exception in a handler becomes an Error reply naming the site, the error type and, for the
project's own errors (whose messages name settings and rules), the message with file paths and file
names replaced by `<path>`; the full detail, traceback included, goes to the site's own log. A data
validation error sends only its problem count (its message quotes cell values). A site whose data
did not load (SiteDataError) refuses the run with SITE_DATA_ERROR and that short reason, every time it is
asked. Error replies a handler builds itself (policy refusals) are scrubbed of paths the same way.
"""

from __future__ import annotations

import logging
import re

from flwr.app import Context, Error, Message
from flwr.clientapp.typing import ClientAppCallable

from fedward.common.errors import DataValidationError, FedwardError, SiteDataError

log = logging.getLogger("fedward.client")

SITE_ERROR = 4000  # an unexpected exception at the site (details in its log)
SITE_CONFIG_ERROR = 4001  # a fedward error: data, configuration or privacy rule
SITE_DATA_ERROR = 4002  # the site's data did not load: it sits the run out (common.errors.SiteDataError)
MAX_REASON = 300
_NAME = r"""[^\s'"`,;:()\[\]{}<>/\\]"""  # a character of a path segment
_PATH = re.compile(
    rf"(?<![\w.~-])(?:[A-Za-z]:)?[~.]?[\\/]{_NAME}*(?:[\\/]{_NAME}*)*"  # /abs, ./rel, ~/home, C:\\win
    rf"|{_NAME}+(?:[\\/]{_NAME}+){{2,}}"  # rel/with/two/slashes
    rf"|(?:{_NAME}+[\\/])?[\w.-]+\.(?:csv|tsv|json|toml|ya?ml|dcm|nii|gz|png|jpe?g|pt|txt|log|db|key|crt|pem)\b"
)


def scrub(text: str) -> str:
    """`text`'s first line with file paths and names replaced by `<path>`, at most MAX_REASON characters."""
    line = text.strip().splitlines()[0] if text.strip() else ""
    line = _PATH.sub("<path>", line)
    return line if len(line) <= MAX_REASON else line[: MAX_REASON - 3] + "..."


def _site(context: Context) -> str:
    node = context.node_config
    return str(node.get("site-id", f"site-{node.get('partition-id', '?')}"))


def safe_reason(exc: BaseException) -> tuple[int, str]:
    """The reason code and the short message the coordinator may see for `exc`."""
    if isinstance(exc, SiteDataError):  # its cause was made safe where the data failed to load
        return SITE_DATA_ERROR, f"refuses the run: its {exc.task} data did not load ({exc.cause})"
    if isinstance(exc, DataValidationError):
        return SITE_CONFIG_ERROR, f"{type(exc).__name__}: {len(exc.problems)} problem(s) in the site's data"
    if isinstance(exc, FedwardError):
        return SITE_CONFIG_ERROR, f"{type(exc).__name__}: {scrub(str(exc))}"
    return SITE_ERROR, type(exc).__name__


def safe_errors_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Run the handler; an exception (or an error reply) leaves the site as a short, path-free Error."""
    site = _site(context)
    try:
        reply = call_next(msg, context)
    except SiteDataError as exc:  # already logged in full where the data failed to load
        log.warning("site %s: %s refused: %s", site, msg.metadata.message_type, exc)
        code, reason = safe_reason(exc)
        return Message(Error(code=code, reason=f"site {site}: {reason}"), reply_to=msg)
    except Exception as exc:  # every failure must become a safe reply
        log.exception("site %s: %s failed", site, msg.metadata.message_type)
        code, reason = safe_reason(exc)
        return Message(
            Error(code=code, reason=f"site {site}: {reason} (details in the site's log)"), reply_to=msg
        )
    if reply.has_error():
        log.warning("site %s: %s error reply: %s", site, msg.metadata.message_type, reply.error.reason)
        return Message(Error(code=reply.error.code, reason=scrub(reply.error.reason or "")), reply_to=msg)
    return reply
