"""Reports: the tables, JSON report and JUnit XML (``report``), the HTML/Markdown review
(``review``) and the figures (``plots``)."""
