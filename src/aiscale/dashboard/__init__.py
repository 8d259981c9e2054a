"""The live dashboard: a static page served by the gateway at ``/dashboard``.

The page (``index.html``, ``dashboard.js``) polls ``/admin/monitor/snapshot`` and draws it with
plotly.js; its LLM panel (``llm_panel.js``) polls ``/metrics`` for the LLM deployments' TTFT,
ITL, tokens/s and cache hit rate. Both draw with plotly.js, served from the ``plotly`` Python
package's bundled copy (no CDN, no build step).
"""

from __future__ import annotations

from aiscale.dashboard.assets import DashboardAssets, plotly_js_path

__all__ = ["DashboardAssets", "plotly_js_path"]
