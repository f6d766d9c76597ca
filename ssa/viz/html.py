"""JSON inside an HTML ``<script>`` element, safe whatever the strings hold: the one helper every page uses.

The HTML parser ends a ``<script>`` element at ``</script`` and enters its "escaped" states at ``<!--``
(after which a ``<script>`` in the text makes the real ``</script>`` no longer end the element, and the
rest of the page disappears into the script). JSON strings may hold all of these (a tap named
``<!--<script>``), so every ``<``, ``>`` and ``&`` is written as its JSON escape (``\\u003c``,
``\\u003e``, ``\\u0026``), as are U+2028 and U+2029 (line terminators in older JavaScript): the text
then holds no markup at all, and ``JSON.parse`` of the element's text gives the same value back
(the recipe of Django's ``json_script`` and of the HTML standard's advice on script content).
"""

from __future__ import annotations

import html
import json
from typing import Any

__all__ = ["json_script", "script_json"]

_ESCAPES = {ord("<"): "\\u003c", ord(">"): "\\u003e", ord("&"): "\\u0026",
            0x2028: "\\u2028", 0x2029: "\\u2029"}


def script_json(obj: Any) -> str:
    """``obj`` as compact JSON holding no ``<``, ``>``, ``&``, U+2028 or U+2029 (NaN refused)."""
    return json.dumps(obj, separators=(",", ":"), allow_nan=False).translate(_ESCAPES)


def json_script(obj: Any, element_id: str) -> str:
    """A ``<script type="application/json" id=...>`` element holding ``obj`` (read it with
    ``JSON.parse(document.getElementById(id).textContent)``)."""
    return (f'<script type="application/json" id="{html.escape(element_id, quote=True)}">'
            f"{script_json(obj)}</script>")
