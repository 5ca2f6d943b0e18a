"""The offline audit: ``report`` (selection and report.html), ``charts`` (SVG), ``overlays`` (PNG panels)."""
