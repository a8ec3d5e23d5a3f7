"""One HTML page per run, sweep and study: static, self-contained (the pictures are files beside
it, referenced by relative paths; no script or style is fetched), made with Jinja2 templates
(`templates/`), every value escaped.

- `run_page.write(workdir)`: WORKDIR/report.html, from the files a run leaves (written at the end
  of training, and refreshed by `--mode=evaluate` and `--mode=export`).
- `trials_page.write(...)`: DIR/report.html of a sweep or a study, its tables sortable.
- `python -m tlflax.report WORKDIR`: the run page of any workdir, an unfinished one included.
"""
