"""Which URLs the downloader may fetch: https, or plain http where the registry opts in.

Its own module so that both the resumable fetcher and the Hugging Face client apply the same rule.
"""

from __future__ import annotations

from urllib.parse import urlsplit


def check_scheme(url: str, remote, via: str | None = None) -> None:
    """Refuse plain http unless `remote.allow_http`, and any https -> http redirect (one line)."""
    scheme = urlsplit(url).scheme
    where = f"{remote.url}: redirected from {via} to {url}" if via else f"{remote.url}"
    if scheme == "https":
        return
    if scheme == "http" and via and urlsplit(via).scheme == "https":
        raise ValueError(f"{where}: a redirect from https to plain http is refused")
    if scheme == "http" and not remote.allow_http:
        raise ValueError(
            f"{where}: plain http refused (the file could be altered in transit); use an https URL "
            f"or set allow_http: true on this source in the registry"
        )
    if scheme not in ("http", "https"):
        raise ValueError(f"{where}: only https (or opted-in http) URLs are fetched")
