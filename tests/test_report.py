"""The run page (WORKDIR/report.html): its numbers equal the JSON files they come from, HTML
characters in class names are escaped, a browser loads it cleanly, an unfinished workdir gets a
page that says what is missing; `--mode=explain` and `python -m tlflax.report`."""
import csv
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from browser import assert_renders
from html_pages import Page
from runs import ROOT, TINY, make_synthetic_folder, run_main
from tlflax.objectives import TOP_K

# class folders named with HTML's special characters
CLASSES = {'<b>cat & "co"': (200, 60, 60), "dog's <i>": (60, 60, 200)}


@pytest.fixture(scope='module')
def html_names_run(tiny_run, tmp_path_factory):
  """The tiny run on images whose class folders hold `<`, `&` and quotes: (config, workdir)."""
  from tlflax.train import train_and_evaluate
  base = tmp_path_factory.mktemp('html_names')
  config = tiny_run.copy_and_resolve_references()
  config.data.folder = str(make_synthetic_folder(base / 'images', classes=CLASSES))
  workdir = base / 'run'
  train_and_evaluate(config, workdir)
  return config, workdir


def read_json(path):
  return json.loads(path.read_text())


def close(cell, value):
  """A cell shows `value` to 4 decimals and sorts by its exact value."""
  assert float(cell.text) == pytest.approx(value, abs=5e-5), (cell, value)
  assert float(cell.value) == value  # repr round-trips


def test_the_run_page_numbers_equal_the_json(html_names_run):
  _, workdir = html_names_run
  page = Page(workdir / 'report.html')
  history = read_json(workdir / 'history.json')
  rows = page.tables['epochs']
  assert [int(r['epoch'].text) for r in rows] == [e['epoch'] for e in history['epochs']]
  for row, epoch in zip(rows, history['epochs']):
    assert row['phase'].text == epoch['phase']
    for key in ('learning_rate', 'loss', 'accuracy', 'val_loss', 'val_accuracy'):
      close(row[key], epoch[key])
  for split in ('test', 'validation'):
    report = read_json(workdir / 'evaluation' / f'{split}.json')
    numbers = page.row_headers[f'{split}-numbers']
    assert int(numbers['examples'].text) == report['count']
    close(numbers['loss'], report['loss'])
    close(numbers['accuracy'], report['accuracy'])
    assert f'top-{TOP_K} accuracy' not in numbers  # two classes
    per_class = {r['class'].text: r for r in page.tables[f'{split}-per-class']}
    assert list(per_class)[:2] == list(CLASSES)
    for name, values in report['per_class'].items():
      for key in ('precision', 'recall', 'f1'):
        close(per_class[name][key], values[key])
      assert int(per_class[name]['support'].text) == values['support']
    for average in ('macro', 'weighted'):
      for key in ('precision', 'recall', 'f1'):
        close(per_class[f'{average} average'][key], report[f'{average}_average'][key])
    matrix = [[int(r[f'p{j}'].text) for j in range(len(CLASSES))]
              for r in page.tables[f'{split}-confusion']]
    assert matrix == report['confusion_matrix']
    calibration = page.row_headers[f'{split}-calibration']
    for key, label in (('temperature', 'temperature'), ('ece_before', 'ECE before'),
                       ('ece_after', 'ECE after'), ('nll_before', 'NLL before'),
                       ('nll_after', 'NLL after')):
      close(calibration[label], report['calibration'][key])
    assert (f'the {split} split, the checkpoint of epoch {report["checkpoint_epoch"]} '
            f'(trained weights), {report["count"]} examples') in page.all_text
  test = read_json(workdir / 'test_metrics.json')
  close(page.row_headers['summary']['accuracy'], test['accuracy'])  # the summary at the top


def test_the_mistakes_are_shown_with_their_grad_cam_overlays(html_names_run):
  config, workdir = html_names_run
  page = Page(workdir / 'report.html')
  for split in ('test', 'validation'):
    mistakes = read_json(workdir / 'evaluation' / f'{split}.json')['most_confident_mistakes']
    assert mistakes, 'the tiny run makes mistakes'
    for rank, mistake in enumerate(mistakes, 1):
      assert mistake['gradcam'] == f'{split}_gradcam/{rank:02d}.png'
      overlay = Image.open(workdir / 'evaluation' / mistake['gradcam'])
      assert overlay.size == (2 * config.image_size + 4, config.image_size)
      assert f"evaluation/{split}_gradcam/{rank:02d}.png" in page.images
    assert len(list((workdir / 'evaluation' / f'{split}_gradcam').iterdir())) == len(mistakes)


def test_class_names_with_html_characters_are_escaped(html_names_run):
  _, workdir = html_names_run
  source = (workdir / 'report.html').read_text()
  for name in CLASSES:
    assert name not in source  # only in escaped form
  page = Page(workdir / 'report.html')
  assert 'b' not in page.tags and 'i' not in page.tags  # no element came from a class name
  for name in CLASSES:
    assert name in page.all_text  # shown as written


def test_the_run_page_loads_in_a_browser_without_errors(html_names_run, browser):
  _, workdir = html_names_run
  check = browser.check(workdir / 'report.html')
  assert_renders(check)
  assert check.screenshot.shape[0] > 2000  # the whole page, not the first screen


def test_the_browser_check_sees_a_broken_image_and_a_script_error(tmp_path, browser):
  page = tmp_path / 'broken.html'
  page.write_text('<!DOCTYPE html><html><body><p>text</p><img src="missing.png">'
                  '<script>undefined_function();</script></body></html>')
  check = browser.check(page)
  assert check.broken_images and check.console_errors
  blank = tmp_path / 'blank.html'
  blank.write_text('<!DOCTYPE html><html><body></body></html>')
  with pytest.raises(AssertionError, match='one colour'):
    assert_renders(browser.check(blank))


def test_an_unfinished_workdir_gets_a_page_that_says_what_is_missing(html_names_run, tmp_path,
                                                                     browser):
  _, workdir = html_names_run
  unfinished = tmp_path / 'unfinished'
  unfinished.mkdir()
  shutil.copy(workdir / 'config.json', unfinished)
  (unfinished / 'environment.json').write_text('[{"time": "2026-01-01T00:00:00+00:00"')  # cut
  result = subprocess.run([sys.executable, '-m', 'tlflax.report', str(unfinished)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr
  assert f'wrote {unfinished / "report.html"}' in result.stdout
  page = Page(unfinished / 'report.html')
  assert 'history.json is missing: no run finished here' in page.all_text
  assert 'No epoch was saved yet.' in page.all_text
  assert 'evaluation/test.json is missing' in page.all_text
  assert 'environment.json could not be read' in page.all_text
  assert 'config-differences' in page.tables  # what there is, it shows
  assert_renders(browser.check(unfinished / 'report.html'))


@pytest.mark.parametrize('target,message', [
    ('missing', 'does not exist'), ('a_file', 'is not a folder'),
    ('sweep', 'holds a sweep or a study')])
def test_the_report_command_names_a_bad_workdir_in_one_line(tmp_path, target, message):
  (tmp_path / 'a_file').write_text('')
  (tmp_path / 'sweep').mkdir()
  (tmp_path / 'sweep' / 'results.csv').write_text('')
  result = subprocess.run([sys.executable, '-m', 'tlflax.report', str(tmp_path / target)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert result.returncode != 0
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and message in lines[0], result.stderr


def test_evaluate_refreshes_the_page(html_names_run):
  from tlflax.train import evaluate_checkpoint
  config, workdir = html_names_run
  (workdir / 'report.html').unlink()
  evaluate_checkpoint(config, workdir, 'validation')
  assert 'validation-per-class' in Page(workdir / 'report.html').tables


def test_the_real_run_page_shows_grad_cam_on_real_photos(real_cats_dogs_run, browser):
  """The tutorial's recipe on the shared photos: every mistake has its overlay, and the page
  renders."""
  _, workdir, _ = real_cats_dogs_run
  for split in ('test', 'validation'):
    mistakes = read_json(workdir / 'evaluation' / f'{split}.json')['most_confident_mistakes']
    assert mistakes  # the run is not perfect
    for mistake in mistakes:
      assert Image.open(workdir / 'evaluation' / mistake['gradcam']).size == (2 * 160 + 4, 160)
  check = browser.check(workdir / 'report.html')
  assert_renders(check)


def overrides(config):
  settings = {**TINY, 'data.folder': config.data.folder, 'model.weights': config.model.weights}
  return [f'--config.{key}={value}' for key, value in settings.items()]


def test_explain_writes_an_overlay_per_image_and_the_top_class_as_predict_does(
    html_names_run, tmp_path):
  config, workdir = html_names_run
  inputs = f'{config.data.folder}/test'
  code, output = run_main(workdir, overrides(config), '--mode=explain', f'--inputs={inputs}',
                          f'--output={tmp_path / "explained"}')
  assert code == 0, output
  with open(tmp_path / 'explained' / 'gradcam.csv', newline='', encoding='utf-8') as f:
    explained = list(csv.DictReader(f))
  code, output = run_main(workdir, overrides(config), '--mode=predict', f'--inputs={inputs}',
                          '--nocalibrated', f'--output={tmp_path / "predicted.csv"}')
  assert code == 0, output
  with open(tmp_path / 'predicted.csv', newline='', encoding='utf-8') as f:
    predicted = list(csv.DictReader(f))
  assert len(explained) == len(predicted) == 12
  assert [(r['path'], r['label']) for r in explained] == [(r['path'], r['label'])
                                                           for r in predicted]
  assert [float(r['probability']) for r in explained] == pytest.approx(
      [float(r['probability']) for r in predicted], abs=1e-5)
  for row in explained:
    overlay = np.asarray(Image.open(tmp_path / 'explained' / row['overlay']))
    assert overlay.shape == (config.image_size, 2 * config.image_size + 4, 3)
    assert not np.array_equal(overlay[:, :config.image_size],
                              overlay[:, -config.image_size:])  # the map is drawn over it


@pytest.mark.parametrize('extra,message', [
    (['--inputs=/no/such/images'], '--inputs /no/such/images does not exist'),
    (['--inputs=IMAGES', '--output=WORKDIR'], 'exists and is not an empty folder'),
    ([], '--mode=explain needs --inputs=PATH')])
def test_explain_names_a_bad_input_in_one_line(html_names_run, extra, message):
  config, workdir = html_names_run
  extra = [e.replace('IMAGES', f'{config.data.folder}/test').replace('WORKDIR', str(workdir))
           for e in extra]
  code, output = run_main(workdir, overrides(config), '--mode=explain', *extra)
  assert code != 0
  assert message in output, output
  assert 'Traceback' not in output


def test_links_quote_what_a_url_path_cannot_hold():
  from tlflax.report.html import url
  assert url('a#b?c%/d e:f.png') == 'a%23b%3Fc%25/d%20e%3Af.png'
  assert url('learning_rate=0.001,seed=0/report.html') == (
      'learning_rate=0.001,seed=0/report.html')
