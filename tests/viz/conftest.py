"""Browser fixtures (Chromium through Playwright, Panel served on 127.0.0.1): see tests/browser.py."""

from browser import chromium_page, serve_panel  # noqa: F401  (fixtures)
