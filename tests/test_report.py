"""The run page (WORKDIR/report.html): its numbers equal the JSON files they come from, HTML
characters in class names are escaped, a browser loads it cleanly, an unfinished workdir gets a
page that says what is missing; `--mode=explain` and `python -m tlflax.report`."""
import csv
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from browser import assert_renders
from html_pages import Page
from runs import ROOT, TINY, make_synthetic_folder, run_main
from tlflax import explain
from tlflax.errors import DataError
from tlflax.objectives import TOP_K
from tlflax.report import html, recipe, run_page, trials_page

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
  counts = {}
  for split in ('test', 'validation'):
    mistakes = read_json(workdir / 'evaluation' / f'{split}.json')['most_confident_mistakes']
    counts[split] = len(mistakes)
    for rank, mistake in enumerate(mistakes, 1):
      assert re.fullmatch(f'{split}_gradcam/{rank:02d}_[0-9a-f]{{12}}.png', mistake['gradcam'])
      overlay = Image.open(workdir / 'evaluation' / mistake['gradcam'])
      assert overlay.size == (2 * config.image_size + 4, config.image_size)
      assert f"evaluation/{mistake['gradcam']}" in page.images
    overlays = workdir / 'evaluation' / f'{split}_gradcam'  # made only for mistakes
    assert (len(list(overlays.iterdir())) if overlays.is_dir() else 0) == len(mistakes)
  # the tiny run makes mistakes (measured: 1 of 12 test images, 3 of 12 validation ones; a
  # single test mistake is no margin against another CPU's rounding, so the two together)
  assert sum(counts.values()) >= 2, counts


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
  assert 'The run has not finished' in page.all_text
  assert 'No epoch was saved yet.' in page.all_text
  assert 'evaluation/test.json is missing' in page.all_text
  assert 'environment.json could not be read' in page.all_text
  assert 'config-differences' in page.tables  # what there is, it shows
  assert_renders(browser.check(unfinished / 'report.html'))


@pytest.mark.parametrize('target,message', [
    ('missing', 'does not exist'), ('a_file', 'is not a folder'),
    ('sweep', 'holds a sweep or a study'), ('empty', 'holds no tlflax run')])
def test_the_report_command_names_a_bad_workdir_in_one_line(tmp_path, target, message):
  (tmp_path / 'a_file').write_text('')
  (tmp_path / 'empty').mkdir()
  (tmp_path / 'sweep').mkdir()
  (tmp_path / 'sweep' / 'results.csv').write_text('')
  result = subprocess.run([sys.executable, '-m', 'tlflax.report', str(tmp_path / target)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert result.returncode != 0
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and message in lines[0], result.stderr


def named_overlays(workdir, split):
  report = read_json(workdir / 'evaluation' / f'{split}.json')
  return {m['gradcam'].split('/')[1] for m in report['most_confident_mistakes']}


def test_evaluate_refreshes_the_page_and_keeps_overlays_in_step_with_the_json(
    html_names_run, monkeypatch):
  """Another checkpoint's evaluation, interrupted as it writes its JSON, leaves the old JSON
  with its overlays; finished, the new JSON with its own, and nothing else."""
  from tlflax import evaluation
  from tlflax.train import evaluate_checkpoint
  config, workdir = html_names_run
  folder = workdir / 'evaluation' / 'validation_gradcam'
  before = named_overlays(workdir, 'validation')
  assert before == {p.name for p in folder.iterdir()}
  with monkeypatch.context() as patch:
    def interrupted(path, value):
      raise KeyboardInterrupt
    patch.setattr(evaluation, 'write_json', interrupted)
    with pytest.raises(KeyboardInterrupt):
      evaluate_checkpoint(config, workdir, 'validation', checkpoint='1')
  assert named_overlays(workdir, 'validation') == before
  assert all((folder / name).is_file() for name in before)
  shown = [image for image in Page(workdir / 'report.html').images if 'gradcam' in image]
  with monkeypatch.context() as patch:  # interrupted after the JSON, before the page
    def interrupted(workdir, what):
      raise KeyboardInterrupt
    patch.setattr(run_page, 'write_after', interrupted)
    with pytest.raises(KeyboardInterrupt):
      evaluate_checkpoint(config, workdir, 'validation', checkpoint='1')
  assert all((workdir / image).is_file() for image in shown)  # the old page's overlays
  assert named_overlays(workdir, 'validation') <= {p.name for p in folder.iterdir()}  # the new
  (workdir / 'report.html').unlink()
  report = evaluate_checkpoint(config, workdir, 'validation', checkpoint='1')
  assert report['checkpoint_epoch'] == 1
  after = named_overlays(workdir, 'validation')
  assert after == {p.name for p in folder.iterdir()} and after != before
  page = Page(workdir / 'report.html')
  assert 'the validation split, the checkpoint of epoch 1' in page.all_text
  evaluate_checkpoint(config, workdir, 'validation')  # back to the last epoch, for other tests


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
    pixels = np.asarray(Image.open(tmp_path / 'explained' / row['overlay']))
    assert pixels.shape == (config.image_size, 2 * config.image_size + 4, 3)
    image, drawn = pixels[:, :config.image_size], pixels[:, -config.image_size:]
    assert not np.array_equal(drawn, explain.overlay(image, np.zeros(image.shape[:2])))  # a map


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


def test_overlay_names_are_valid_files_whatever_the_input_name():
  assert explain.overlay_name(3, 'a/cat photo #1.jpg') == '0003_cat_photo__1.png'
  undecodable = explain.overlay_name(1, Path(os.fsdecode(b'bad\xff\xfe.jpg')))
  assert undecodable == '0001_bad__.png'
  assert len(explain.overlay_name(12, '\U0001f431' * 200 + '.jpg').encode()) < 80


def test_explain_numbers_its_default_folder_and_refuses_a_used_one(tmp_path):
  assert explain.output_folder(tmp_path, None, 'checkpoint_latest') == (
      tmp_path / 'explain_checkpoint_latest')
  (tmp_path / 'explain_checkpoint_latest').mkdir()
  (tmp_path / 'explain_checkpoint_latest_2').mkdir()
  assert explain.output_folder(tmp_path, None, 'checkpoint_latest') == (
      tmp_path / 'explain_checkpoint_latest_3')
  assert explain.output_folder(tmp_path, str(tmp_path / 'explain_checkpoint_latest'),
                               'x') == tmp_path / 'explain_checkpoint_latest'  # empty: used
  (tmp_path / 'explain_checkpoint_latest' / 'f').write_text('')
  with pytest.raises(DataError, match='is not an empty folder'):
    explain.output_folder(tmp_path, str(tmp_path / 'explain_checkpoint_latest'), 'x')


def test_numbers_keep_small_values_visible():
  assert [html.number(v) for v in (0.123456, 1e-5, 4.04e-5, 1.4e-6, 0.0, 3, None)] == [
      '0.1235', '1e-05', '4.04e-05', '1.4e-06', '0.0000', '3', '']
  assert html.sort_key(float('inf')) == 'Infinity' and html.sort_key(0.1) == '0.1'


def test_the_config_differences_are_the_run_s_own_settings(html_names_run, tmp_path,
                                                            monkeypatch):
  """Against tlflax's defaults (the run's command named no config file): exactly the keys the
  tiny run set, none from resolving the defaults; against a recipe file named by the command:
  its values as the reference."""
  config, workdir = html_names_run
  rows = Page(workdir / 'report.html').tables['config-differences']
  expected = {'model.backbone_args.alpha', 'data.folder', 'model.weights',
              *(key for key in TINY if key != 'model.backbone_args')}
  assert {r['key'].text for r in rows} == expected
  assert not (workdir / 'recipe.json').exists()  # pytest's command names no config file
  assert "differs from tlflax's defaults" in Page(workdir / 'report.html').all_text
  copy = tmp_path / 'run'
  shutil.copytree(workdir, copy, ignore=shutil.ignore_patterns('checkpoints', 'phases',
                                                               'tensorboard'))
  assert recipe.config_spec(['main.py', '--config', 'a.py:v']) == 'a.py:v'
  monkeypatch.chdir(ROOT)  # where the command ran: the file is read then, not by the page
  recipe.record(copy, ['main.py', '--config=configs/cats_dogs.py:local', '--workdir=x'])
  monkeypatch.chdir(tmp_path)
  page = Page(run_page.write(copy))
  assert 'differs from the recipe configs/cats_dogs.py:local' in page.all_text
  rows = {r['key'].text: r for r in page.tables['config-differences']}
  assert rows['phases.feature_extraction.epochs']['default'].text == '2'  # :local's
  assert rows['phases.feature_extraction.epochs']['run'].text == '1'


def test_an_interrupted_run_s_page_shows_its_epochs_and_where_it_resumes(html_names_run,
                                                                        tmp_path):
  """history.json is written after each epoch: without its test numbers the run is
  unfinished, and the page says so next to the epochs it shows."""
  _, workdir = html_names_run
  copy = tmp_path / 'run'
  shutil.copytree(workdir, copy, ignore=shutil.ignore_patterns('evaluation', 'phases',
                                                               'tensorboard'))
  history = read_json(copy / 'history.json')
  del history['test']
  (copy / 'history.json').write_text(json.dumps(history))
  page = Page(run_page.write(copy))
  assert ('The run has not finished: its final evaluation on the test split is missing. Saved '
          'epochs: 1, 2, 3; the training command resumes after epoch 3.') in page.all_text
  assert len(page.tables['epochs']) == 3
  (copy / 'history.json').write_text('{"epochs": [')  # cut: named, not called missing
  page = Page(run_page.write(copy))
  assert 'history.json could not be read' in page.all_text
  assert 'The run has not finished' not in page.all_text


def test_a_workdir_written_otherwise_gets_a_page_with_the_rest(html_names_run, tmp_path):
  """JSON an older tlflax wrote (mistakes without example or probability, no initial loss), or
  edited by hand (phases as a list, a null command, a per-class entry that is a number): the
  page names what it could not show and shows the rest."""
  _, workdir = html_names_run
  copy = tmp_path / 'run'
  shutil.copytree(workdir, copy, ignore=shutil.ignore_patterns('checkpoints', 'phases',
                                                               'tensorboard'))
  history = read_json(copy / 'history.json')
  history['initial'] = {'val_accuracy': 0.5}
  history['epochs'][0]['loss'] = {'not': 'a number'}  # shown as it is
  history['phases'] = ['feature_extraction']
  (copy / 'history.json').write_text(json.dumps(history))
  test = read_json(copy / 'evaluation' / 'test.json')
  for mistake in test['most_confident_mistakes']:
    del mistake['example'], mistake['probability']
  (copy / 'evaluation' / 'test.json').write_text(json.dumps(test))
  validation = read_json(copy / 'evaluation' / 'validation.json')
  validation['per_class'] = {'a': 1}
  (copy / 'evaluation' / 'validation.json').write_text(json.dumps(validation))
  (copy / 'environment.json').write_text(json.dumps([{'command': None, 'time': 'then'}]))
  page = Page(run_page.write(copy))
  assert 'history.json is not laid out as this tlflax writes it' in page.all_text
  assert 'evaluation/validation.json is not laid out' in page.all_text
  assert 'test-per-class' in page.tables and 'validation-per-class' not in page.tables
  assert 'then' in page.all_text  # the environment, its null command left out


def test_many_classes_list_their_most_frequent_confusions(html_names_run, tmp_path):
  _, workdir = html_names_run
  copy = tmp_path / 'run'
  (copy / 'evaluation').mkdir(parents=True)
  classes = [f'class {i}' for i in range(300)]
  matrix = np.eye(300, dtype=int) * 5
  matrix[7, 9], matrix[2, 1] = 4, 3
  (copy / 'evaluation' / 'test.json').write_text(json.dumps({
      'count': int(matrix.sum()), 'loss': 0.5, 'accuracy': 0.9, 'class_names': classes,
      'per_class': {name: {'precision': 1.0, 'recall': 1.0, 'f1': 1.0, 'support': 5}
                    for name in classes},
      'confusion_matrix': matrix.tolist(), 'most_confident_mistakes': []}))
  path = run_page.write(copy)
  assert path.stat().st_size < 500_000
  page = Page(path)
  assert 'test-confusion' not in page.tables
  assert [(r['true'].text, r['predicted'].text, r['count'].text)
          for r in page.tables['test-confusions']] == [('class 7', 'class 9', '4'),
                                                        ('class 2', 'class 1', '3')]


def test_the_page_says_which_weights_and_shows_test_time_augmentation(tmp_path):
  (tmp_path / 'evaluation').mkdir()
  (tmp_path / 'evaluation' / 'test.json').write_text(json.dumps({
      'count': 4, 'loss': 0.25, 'accuracy': 0.75, 'class_names': ['a', 'b'],
      'checkpoint_epoch': 7, 'weights': 'average',
      'tta': {'views': 'flip', 'loss': 0.2, 'accuracy': 1.0},
      'confusion_matrix': [[2, 0], [1, 1]], 'most_confident_mistakes': []}))
  page = Page(run_page.write(tmp_path))
  assert 'the checkpoint of epoch 7 (average weights), 4 examples' in page.all_text
  numbers = page.row_headers['test-numbers']
  assert numbers['test-time augmentation (flip): accuracy'].text == '1.0000'


def test_a_trial_without_a_page_links_to_its_folder(tmp_path):
  (tmp_path / 'done').mkdir()
  (tmp_path / 'done' / 'report.html').write_text('')
  (tmp_path / 'pruned').mkdir()
  assert trials_page.trial_link(tmp_path, 'done') == 'done/report.html'
  assert trials_page.trial_link(tmp_path, 'pruned') == 'pruned/'


def test_the_run_page_fetches_nothing_and_shows_the_environment(html_names_run):
  _, workdir = html_names_run
  source = (workdir / 'report.html').read_text()
  page = Page(workdir / 'report.html')
  assert not [u for u in page.links + page.images if '//' in u or u.startswith('/')]
  assert 'link' not in page.tags and '<script src' not in source
  start = read_json(workdir / 'environment.json')[-1]
  assert start['host'] in page.all_text and start['cwd'] in page.all_text
  assert (start['code'] or {}).get('commit', 'not a git checkout') in page.all_text


def test_a_page_that_cannot_be_written_is_a_warning_after_the_work(html_names_run, monkeypatch,
                                                                    caplog):
  from tlflax.train import evaluate_checkpoint
  config, workdir = html_names_run

  def broken(workdir):
    raise OSError('disk full')
  monkeypatch.setattr(run_page, 'write', broken)
  report = evaluate_checkpoint(config, workdir, 'validation')
  assert report['count'] == 12
  assert any('The evaluation is done, but' in r.getMessage() and 'disk full' in r.getMessage()
             for r in caplog.records)
