"""Queue URLs as people see them: never with the secrets a URL may carry.

``https://alice:s3cret@host/q.git`` works for git, but whatever gitqueue prints or stores
(``init``'s output, ``status``, errors, ``.gitqueue``, the cache's config) must not repeat
the password: people paste output into issues and commit ``.gitqueue`` files. git's own
credential helpers keep secrets properly; gitqueue stores none.
"""

from __future__ import annotations

# Schemes whose userinfo is a login (often a token alone, ``https://TOKEN@github.com/``):
# all of it is secret. For ssh:// and the rest, only a password after ``user:`` is.
LOGIN_SCHEMES = ("http", "https", "ftp", "ftps")

CREDENTIALS_ADVICE = (
    "gitqueue does not keep passwords or tokens from URLs: let git's credential helper keep them "
    "(`git config --global credential.helper store`, or `cache`; see `git help credentials`)"
)


def _split(url: str) -> tuple[str, str, str, str] | None:
    """(scheme, userinfo, host and port, the rest) of a ``scheme://`` URL with userinfo, else None."""
    scheme, sep, after = url.partition("://")
    if not sep:
        return None
    cut = len(after)
    for mark in "/?#":
        at = after.find(mark)
        if at != -1:
            cut = min(cut, at)
    netloc, rest = after[:cut], after[cut:]
    userinfo, sign, host = netloc.rpartition("@")
    if not sign:
        return None
    return scheme, userinfo, host, rest


def redact(url: str) -> str:
    """``url`` without its secret: a login URL loses its userinfo, any other its password."""
    parts = _split(url)
    if parts is None:
        return url
    scheme, userinfo, host, rest = parts
    if scheme.lower() in LOGIN_SCHEMES or not userinfo:
        return f"{scheme}://{host}{rest}"
    user, colon, _ = userinfo.partition(":")
    return f"{scheme}://{user}@{host}{rest}" if colon else url


def has_secret(url: str) -> bool:
    return redact(url) != url


def scrub(text: str, url: str) -> str:
    """``text`` (git's words, say) with ``url``'s secret taken out wherever it appears."""
    parts = _split(url)
    if parts is None or not has_secret(url):
        return text
    scheme, userinfo, _, _ = parts
    keep = "" if scheme.lower() in LOGIN_SCHEMES else userinfo.partition(":")[0] + "@"
    return text.replace(url, redact(url)).replace(userinfo + "@", keep)
