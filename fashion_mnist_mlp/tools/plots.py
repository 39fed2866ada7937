"""DVC's plots without a network: the page template `dvc plots show` fills (with vega, vega-lite
and vega-embed inline instead of from a CDN) and PNGs of its charts for the report.

    python -m fashion_mnist_mlp.tools.plots    # (re)writes .dvc/plots/offline.html from the locked vl-convert

.dvc/config names the template (`plots.html_template`), so `dvc plots show` and `dvc plots diff`
write pages that draw on a machine without internet. The scripts come from vl-convert-python,
which bundles the three libraries (and renders charts to PNG with the same code).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import vl_convert

OFFLINE_TEMPLATE = Path(".dvc/plots/offline.html")
VEGA_LITE = "5.21"  # DVC writes vega-lite v5 specs; the newest v5 vl-convert bundles

# DVC fills {refresh_tag} and {plot_divs} (dvc_render.html); without a {scripts} placeholder it
# adds no CDN script tags
PAGE = """<!DOCTYPE html>
<html>
<head>
    {refresh_tag}
    <meta charset="utf-8">
    <title>DVC Plot</title>
    <!-- vega-lite %(vega_lite)s, vega %(vega)s, vega-embed %(embed)s, bundled by vl-convert-python %(vlc)s:
         python -m fashion_mnist_mlp.tools.plots writes this file -->
    <script type="text/javascript">
%(bundle)s
    </script>
    <style>
        table {
            border-spacing: 15px;
        }
    </style>
</head>
<body>
    {plot_divs}
</body>
</html>
"""


def offline_template() -> str:
    bundle = vl_convert.javascript_bundle(vl_version=VEGA_LITE)
    for placeholder in ("{plot_divs}", "{scripts}", "{refresh_tag}"):
        if placeholder in bundle:  # DVC would replace it inside the libraries' code
            raise RuntimeError(f"vl-convert's bundle contains DVC's placeholder {placeholder}")
    return PAGE % {
        "vega_lite": VEGA_LITE,
        "vega": vl_convert.get_vega_version(),
        "embed": vl_convert.get_vega_embed_version(),
        "vlc": vl_convert.__version__,
        "bundle": bundle,
    }


def chart_png(spec: dict[str, Any]) -> bytes:
    """A DVC vega-lite chart (from `dvc plots diff --json`) as a PNG."""
    return vl_convert.vegalite_to_png(spec, vl_version=VEGA_LITE, scale=1.5)


def main() -> None:
    from fashion_mnist_mlp.training.files import atomic_path

    with atomic_path(OFFLINE_TEMPLATE) as staging:
        staging.write_text(offline_template())
    print(f"wrote {OFFLINE_TEMPLATE} ({OFFLINE_TEMPLATE.stat().st_size // 1024} KiB)")


if __name__ == "__main__":
    main()
