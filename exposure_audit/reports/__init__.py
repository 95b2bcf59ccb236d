"""Reports: the tables, JSON report and JUnit XML (``report``), the report JSON as types with
``from_json``/``to_json`` (``schema``: ``Report``, its canary rows and sections, the sweep's
rows), the HTML/Markdown review (``review``) and the figures (``plots``)."""
