"""`panel serve app/` starts and serves the page, with every resource from the local server."""

from __future__ import annotations

import re
import time


def test_panel_serve_serves_the_page(app_server):
    base, log_path = app_server.base, app_server.log_path
    status, html = app_server.wait_until_serving()
    assert status == 200
    assert "<title>so3krates</title>" in html
    assert "bokeh" in html.lower()  # the Bokeh document is embedded, not an error page
    # every script and stylesheet comes from this server (no CDN): relative or loopback URLs
    urls = re.findall(r"""(?:src|href)\s*=\s*["']([^"']+)["']""", html)
    external = [u for u in urls if re.match(r"^(https?:)?//", u) and not u.startswith(base)]
    assert not external, f"resources outside the local server: {external}"
    time.sleep(1.0)  # let the server flush anything it logs after answering
    assert not app_server.problems(), log_path.read_text()
