"""One HTML page per run, sweep and study: static, self-contained (the pictures are files beside
it, referenced by relative paths; no script or style is fetched), made with Jinja2 templates
(`templates/`), every value escaped.

- `run_page.write(workdir)`: WORKDIR/report.html, from the files a run leaves (written at the end
  of training, and refreshed by `--mode=evaluate` and `--mode=export`).
- `trials_page.context(...)`: what DIR/report.html of a sweep or a study shows (its tables
  sortable); `tlflax.sweep.report` and `tlflax.tune.report` write it.
- `python -m tlflax.report WORKDIR`: the run page of any workdir, an unfinished one included.
"""
